"""Byte-level tokenizer and chat template: everything works offline, any text round-trips.

Ids 0..255 are the UTF-8 bytes of the text; special tokens follow. Special tokens are
never produced from user text (``encode`` only emits bytes), so a user cannot forge a role
marker by typing ``<|assistant|>``.

Chat layout (one turn per message)::

    <|system|> bytes <|end|> <|user|> bytes <|end|> <|assistant|> bytes <|end|> ...

with ``<|assistant|>`` appended when a reply is to be generated.
"""

from __future__ import annotations

import codecs
from typing import Iterable, Mapping, Sequence

ROLES = ("system", "user", "assistant")


class ByteTokenizer:
    """UTF-8 bytes plus special tokens for padding, document bounds, roles and end of turn."""

    PAD, BOS, EOS, SYSTEM, USER, ASSISTANT, END = range(256, 263)
    size = 263
    special_names = {
        256: "<|pad|>",
        257: "<|bos|>",
        258: "<|eos|>",
        259: "<|system|>",
        260: "<|user|>",
        261: "<|assistant|>",
        262: "<|end|>",
    }
    role_ids = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

    @property
    def stop_ids(self) -> frozenset[int]:
        """Tokens that end a generated reply."""
        return frozenset({self.EOS, self.END})

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Text -> ids. Raises TypeError for non-str input and UnicodeEncodeError for text
        that is not valid Unicode (lone surrogates)."""
        if not isinstance(text, str):
            raise TypeError(f"ByteTokenizer.encode expects str, got {type(text).__name__}")
        ids = list(text.encode("utf-8"))
        return ([self.BOS] if bos else []) + ids + ([self.EOS] if eos else [])

    def decode(self, ids: Iterable[int], *, show_special: bool = False) -> str:
        """Ids -> text; invalid UTF-8 byte runs become U+FFFD, special tokens are dropped
        (or shown by name with ``show_special``)."""
        out, buf = [], bytearray()
        for i in ids:
            i = int(i)
            if i < 256:
                buf.append(i)
                continue
            if show_special:
                out.append(buf.decode("utf-8", errors="replace"))
                buf.clear()
                out.append(self.special_names.get(i, f"<|{i}|>"))
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def stream_decoder(self) -> "StreamDecoder":
        """An incremental decoder that emits only complete characters."""
        return StreamDecoder()

    def chat(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        """Encode a conversation ``[{"role": ..., "content": ...}, ...]`` with the chat template."""
        ids: list[int] = []
        for i, msg in enumerate(messages):
            role, content = msg.get("role"), msg.get("content")
            if role not in self.role_ids:
                raise ValueError(f"message {i}: role {role!r} is not one of {ROLES}")
            if not isinstance(content, str):
                raise TypeError(f"message {i}: content must be str, got {type(content).__name__}")
            ids += [self.role_ids[role], *content.encode("utf-8"), self.END]
        if add_generation_prompt:
            ids.append(self.ASSISTANT)
        return ids

    def turn(self, prompt: str, response: str | None = None) -> tuple[list[int], list[int]]:
        """One user turn and (optionally) its reply: (prompt ids ending in <|assistant|>,
        response ids ending in <|end|>). The pair is what a learner trains on."""
        p = self.chat([{"role": "user", "content": prompt}])
        r = [] if response is None else [*self.encode(response), self.END]
        return p, r


class StreamDecoder:
    """Feeds token ids, returns newly completed text; specials are dropped."""

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        if token_id >= 256:
            return ""
        return self._dec.decode(bytes([token_id]))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)
