"""A Hugging Face tokenizer with the byte tokenizer's surface, chat template included.

:class:`HFTokenizer` wraps the tokenizer saved beside a model (``AutoTokenizer``) and offers
what generation, chat and the learner use: ``encode``/``decode``, ``chat(messages)``,
``continue_chat(messages)``, ``turn(prompt, response)``, ``stream_decoder()``, ``stop_ids`` and
the ids ``END`` (end of an assistant turn), ``EOS``, ``PAD``.

* Chat templates: the template is rendered to text (``apply_chat_template(tokenize=False)``,
  a string in transformers 4.x and 5.x alike; :func:`template_ids` reads the token-id results of
  either version, a list or a BatchEncoding/dict) and then tokenized piece by piece.
* Special tokens cannot be forged: the text of each message is tokenized with
  ``split_special_tokens=True``, so a user typing ``<|im_end|>`` gets the characters, never the
  special id; only the template's own text may produce special tokens. ``encode`` never
  produces them either.
* End of turn: rendering a probe conversation shows which special token closes an assistant
  message (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, or the eos token). A closed turn
  ends right after it -- in the session's state, in ``turn``'s response ids and in
  ``chat(..., add_generation_prompt=False)`` -- and generation stops at it and at eos.
* Without a template, a plain ``user: ...\\nassistant: `` layout closed by eos is used.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

PROBE_USER, PROBE_REPLY, PROBE_NEXT = "synclearn probe question", "synclearn probe reply", "synclearn probe next"


def template_ids(rendered: Any) -> list[int]:
    """Token ids from ``apply_chat_template(..., tokenize=True)`` in either transformers major
    version: 4.x returns a list of ids, 5.x a BatchEncoding (a dict with ``input_ids``)."""
    if isinstance(rendered, Mapping) or hasattr(rendered, "keys"):
        rendered = rendered["input_ids"]
    if hasattr(rendered, "tolist"):
        rendered = rendered.tolist()
    if rendered and isinstance(rendered[0], (list, tuple)):  # a batch of one
        if len(rendered) != 1:
            raise ValueError(f"expected the ids of one conversation, got a batch of {len(rendered)}")
        rendered = rendered[0]
    return [int(i) for i in rendered]


class HFTokenizer:
    """A HF tokenizer with the byte tokenizer's surface (see the module docstring).

    Args:
        tok: a transformers tokenizer.
        extra_stop_ids: more ids that end a reply (e.g. the generation config's eos ids).
    """

    def __init__(self, tok: Any, extra_stop_ids: Sequence[int] = ()) -> None:
        self.tok = tok
        self.template = getattr(tok, "chat_template", None) or None
        self.EOS = tok.eos_token_id
        self.PAD = tok.pad_token_id if tok.pad_token_id is not None else (self.EOS if self.EOS is not None else 0)
        self.size = len(tok)
        self.special_ids = frozenset(int(i) for i in tok.all_special_ids)
        self.END = self._end_of_turn()
        self._stop = frozenset(int(i) for i in (self.EOS, self.END, *extra_stop_ids) if i is not None)

    @property
    def stop_ids(self) -> frozenset[int]:
        """Tokens that end a generated reply: eos, the template's end of turn, the model's eos ids."""
        return self._stop

    # -- plain text ------------------------------------------------------------------------------
    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Text -> ids; special-token strings in ``text`` stay text."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        ids = self._text_ids(text)
        if bos and self.tok.bos_token_id is not None:
            ids = [self.tok.bos_token_id, *ids]
        return ids + ([self.EOS] if eos and self.EOS is not None else [])

    def decode(self, ids: Sequence[int], *, show_special: bool = False) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=not show_special)

    def stream_decoder(self) -> "HFStreamDecoder":
        return HFStreamDecoder(self)

    def _text_ids(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def _template_text_ids(self, text: str) -> list[int]:
        """Template text: its special-token strings are special tokens."""
        if not text:
            return []
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    # -- chat ------------------------------------------------------------------------------------
    def _render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        for i, m in enumerate(messages):
            if not isinstance(m.get("content"), str):
                raise TypeError(f"message {i}: content must be str, got {type(m.get('content')).__name__}")
            if not isinstance(m.get("role"), str):
                raise ValueError(f"message {i}: role {m.get('role')!r} is not a string")
        if self.template is None:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return text + ("assistant: " if add_generation_prompt else "")
        text = self.tok.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                            add_generation_prompt=add_generation_prompt)
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
        return text

    def _segments(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> list[tuple[str, bool]]:
        """The rendered conversation as (text, is_message_content) pieces.

        The template is rendered twice: with the real contents, and with each content replaced
        by a sentinel no text contains. The sentinel rendering shows where the contents go, so
        message text equal to template text (a role name, ``<|im_end|>``) is never mistaken for
        it. Templates that trim contents are handled; one that changes them otherwise gets a
        single piece, accepted only if the contents add no special token to the template's."""
        real = self._render(messages, add_generation_prompt)
        marks = [f"\ue000synclearn{i}\ue001" for i in range(len(messages))]
        marked = self._render([{**m, "content": k} for m, k in zip(messages, marks)], add_generation_prompt)
        for shown in (lambda c: c, str.strip):
            pieces: list[tuple[str, bool]] = []
            rest = marked
            for m, k in zip(messages, marks):
                before, found, rest_after = rest.partition(k)
                if not found:
                    continue  # the template left this message out (or shows it elsewhere)
                pieces += [(before, False), (shown(m["content"]), True)]
                rest = rest_after
                if k in rest:
                    break  # a message shown twice: fall through to the next transformation
            else:
                pieces.append((rest, False))
                if "".join(t for t, _ in pieces) == real:
                    return [p for p in pieces if p[0]]
        specials = [i for i in self._template_text_ids(marked) if i in self.special_ids]
        if [i for i in self._template_text_ids(real) if i in self.special_ids] != specials:
            raise ValueError("the chat template changes the message text in a way synclearn cannot follow, and the "
                             "messages contain special-token text; refusing to let user text form special tokens")
        return [(real, False)]

    def _ids(self, pieces: Sequence[tuple[str, bool]]) -> list[int]:
        return [i for text, content in pieces for i in (self._text_ids(text) if content else self._template_text_ids(text))]

    def chat(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        """Encode a whole conversation with the chat template. With
        ``add_generation_prompt=False`` and a closing assistant message, the ids end at its
        end-of-turn token (what a session's state holds after the turn)."""
        messages = list(messages)
        ids = self._ids(self._segments(messages, add_generation_prompt))
        if not add_generation_prompt and messages and messages[-1].get("role") == "assistant":
            ids = self._cut_after_last_end(ids)
        return ids

    def continue_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """The ids that follow a closed assistant turn to add ``messages`` (e.g. the next user
        message) and open the reply: the template's rendering after an earlier exchange,
        without its preamble (bos, default system prompt)."""
        messages = list(messages)
        history = [{"role": "user", "content": PROBE_USER}, {"role": "assistant", "content": PROBE_REPLY}]
        pieces = self._segments(history + messages, True)
        cut = self._closed_turn_end(self._render(history, False))
        full = "".join(t for t, _ in pieces)
        if cut is None or not full.startswith(self._render(history, False)[:cut]):
            return self.chat(messages)  # the template does not continue a conversation verbatim
        kept, offset = [], 0
        for text, content in pieces:  # drop the first ``cut`` characters (all template text)
            if offset + len(text) > cut:
                kept.append((text[max(0, cut - offset):], content))
            offset += len(text)
        return self._ids(kept)

    def turn(self, prompt: str, response: str | None = None) -> tuple[list[int], list[int]]:
        """One user turn opening a conversation and (optionally) its reply: (prompt ids ending
        in the generation prompt, response ids ending in the end-of-turn token)."""
        p = self.chat([{"role": "user", "content": prompt}])
        r = [] if response is None else [*self.encode(response), *([self.END] if self.END is not None else [])]
        return p, r

    # -- the end of a turn -------------------------------------------------------------------------
    def _end_of_turn(self) -> int | None:
        """The special token that closes an assistant message in the template (else eos)."""
        if self.template is None:
            return self.EOS
        history = [{"role": "user", "content": PROBE_USER}, {"role": "assistant", "content": PROBE_REPLY}]
        try:
            text = self._render(history, False)
        except Exception as err:  # a template that refuses the probe: say so, do not guess silently
            raise ValueError(f"the chat template cannot render a user/assistant exchange: {err}") from err
        at = text.rfind(PROBE_REPLY)
        if at < 0:
            return self.EOS
        for i in self._template_text_ids(text[at + len(PROBE_REPLY):]):
            if i in self.special_ids:
                return i
        return self.EOS

    def _closed_turn_end(self, text: str) -> int | None:
        """Character offset just after the end-of-turn token closing the probe reply in ``text``."""
        at = text.rfind(PROBE_REPLY)
        if at < 0 or self.END is None:
            return None
        end_text = self.tok.convert_ids_to_tokens(self.END)
        found = text.find(end_text, at + len(PROBE_REPLY))
        return None if found < 0 else found + len(end_text)

    def _cut_after_last_end(self, ids: list[int]) -> list[int]:
        if self.END is None or self.END not in ids:
            return ids
        last = len(ids) - 1 - ids[::-1].index(self.END)
        return ids[: last + 1]


class HFStreamDecoder:
    """Decodes the running ids and releases new complete text (held while a character is
    still incomplete: the decoded text ends in U+FFFD)."""

    def __init__(self, tok: HFTokenizer) -> None:
        self.tok, self.ids, self.sent = tok, [], 0

    def feed(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        out, self.sent = text[self.sent:], len(text)
        return out

    def flush(self) -> str:
        text = self.tok.decode(self.ids)
        out, self.sent = text[self.sent:], len(text)
        return out
