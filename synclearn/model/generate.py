"""Sampling and generation for any model with the stateful decoding surface.

A *stateful LM* has ``prefill(ids [B, T], state) -> (logits [B, T, V], state)`` and
``step(ids_t [B], state) -> (logits [B, V], state)`` and a ``tokenizer`` (MCSD models do; the
Hugging Face adapter wraps its KV cache the same way). Everything here works on batch 1.

Stop strings are honoured while streaming: text that might be the beginning of a stop string
is held back until it is clearly not, so a stop string never leaks into the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token.

    Attributes:
        max_new_tokens: upper bound on generated tokens.
        temperature: 0 = greedy; otherwise logits / temperature.
        top_k: keep the k most likely tokens (0 = all).
        top_p: keep the smallest set whose probability reaches top_p (1.0 = all).
        stop: strings that end the generation (not included in the output).
        seed: seeds the sampler (None: a fresh nondeterministic generator).
        ban: token ids that are never generated.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = 0
    ban: Sequence[int] = ()

    def __post_init__(self) -> None:
        if self.stop is None:  # OpenAI-style: stop may be absent, one string, or a list
            object.__setattr__(self, "stop", ())
        elif isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        bad = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            bad.append(f"max_new_tokens={self.max_new_tokens!r} (expected an integer >= 0)")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            bad.append(f"temperature={self.temperature!r} (expected a number >= 0)")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad.append(f"top_k={self.top_k!r} (expected an integer >= 0)")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            bad.append(f"top_p={self.top_p!r} (expected 0 < top_p <= 1)")
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            bad.append(f"stop={self.stop!r} (expected a list of non-empty strings)")
        if bad:
            raise ValueError("invalid sampling parameters: " + "; ".join(bad))


def sample_next(logits: Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> Tensor:
    """Pick one token per row. logits: [B, V] -> [B] int64."""
    if params.ban:
        logits = logits.clone()
        logits[:, list(params.ban)] = float("-inf")
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k:
        kth = logits.topk(min(params.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the first always stays)
        drop = probs.cumsum(-1) - probs >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


class StopStringFilter:
    """Turns a stream of text pieces into output pieces, cutting at the first stop string.

    Work per piece is O(len(piece) + longest stop): only the text not yet released is searched.
    A stop string cannot begin in released text (every tail that could begin one is held
    back), so nothing before the held tail needs looking at again.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = list(stops)
        self.released: list[str] = []  # pieces already returned
        self.pending = ""  # generated text not yet released (at most the longest stop + a piece)
        self.stopped = False

    @property
    def text(self) -> str:
        """Everything generated so far (cut at the stop string once one was seen)."""
        return "".join(self.released) + self.pending

    def _release(self, n: int) -> str:
        out, self.pending = self.pending[:n], self.pending[n:]
        if out:
            self.released.append(out)
        return out

    def feed(self, piece: str) -> str:
        """Add generated text; return what can be released now ('' while unsure)."""
        if self.stopped:
            return ""
        self.pending += piece
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out = self._release(cut)
            self.pending = ""
            return out
        hold = 0  # longest tail of the pending text that is a proper prefix of some stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        return self._release(len(self.pending) - hold)

    def flush(self) -> str:
        return self._release(len(self.pending))


@dataclass
class Generation:
    """A finished generation.

    Attributes:
        text: generated text (stop string excluded).
        ids: generated token ids (the stop token included when one was sampled).
        stop_reason: "stop_token", "stop_string" or "max_tokens".
        state: the model state after the prompt and every id in ``ids``.
        prompt_tokens: number of prompt tokens consumed.
    """

    text: str
    ids: list[int]
    stop_reason: str
    state: Any
    prompt_tokens: int


def stream_generate(
    model: Any,
    prompt_ids: Sequence[int],
    params: SamplingParams = SamplingParams(),
    *,
    state: Any = None,
    stop_ids: Sequence[int] | None = None,
    decode_step: Callable[[Tensor, Any], tuple[Tensor, Any]] | None = None,
    prefill: Callable[[Tensor, Any], tuple[Tensor, Any]] | None = None,
    result: dict | None = None,
) -> Iterator[str]:
    """Yield text pieces as they are generated; the final :class:`Generation` is put in
    ``result["generation"]`` when the iterator finishes.

    Args:
        model: a stateful LM (``prefill``/``step``/``tokenizer``).
        prompt_ids: the prompt as token ids (at least one; ``state`` may carry earlier context).
        params: sampling parameters.
        state: state to continue from (None: a fresh one).
        stop_ids: token ids that end generation (default: the tokenizer's stop ids).
        decode_step: replaces ``model.step`` (e.g. a guarded or sparse step).
        prefill: replaces ``model.prefill`` likewise.
        result: a dict to receive the Generation.
    """
    tok = model.tokenizer
    stop_ids = set(tok.stop_ids if stop_ids is None else stop_ids)
    step = decode_step or model.step
    prefill = prefill or model.prefill
    gen = torch.Generator()
    if params.seed is not None:
        gen.manual_seed(params.seed)
    else:
        gen.seed()
    device = getattr(model, "device", torch.device("cpu"))
    if state is None:
        state = model.init_state(1)
    prompt = list(prompt_ids)
    if not prompt:
        raise ValueError("generation needs at least one prompt token")
    with torch.inference_mode():
        logits, state = prefill(torch.tensor([prompt], device=device), state)
        logits = logits[:, -1]
        decoder, stops = tok.stream_decoder(), StopStringFilter(params.stop)
        ids: list[int] = []
        pieces: list[str] = []
        reason = "max_tokens"
        overlap = torch.device(device).type == "cuda"
        for _ in range(params.max_new_tokens):
            nxt = sample_next(logits, params, gen).to(device)
            if overlap:  # read the token back while the device already runs the next step
                host = nxt.to("cpu", non_blocking=True)
                ready = torch.cuda.Event()
                ready.record()
                logits, state = step(nxt, state)
                ready.synchronize()  # waits for the copy only, not for the step queued after it
                token = int(host[0])
            else:
                token = int(nxt[0])
                logits, state = step(nxt, state)
            ids.append(token)
            if token in stop_ids:
                reason = "stop_token"
                break
            out = stops.feed(decoder.feed(token))
            if out:
                pieces.append(out)
                yield out
            if stops.stopped:
                reason = "stop_string"
                break
        if reason != "stop_string":
            out = stops.feed(decoder.flush()) + ("" if stops.stopped else stops.flush())
            if out:
                pieces.append(out)
                yield out
    if result is not None:
        result["generation"] = Generation("".join(pieces), ids, reason, state, len(prompt))


def generate(
    model: Any,
    prompt: str | Sequence[int],
    *,
    state: Any = None,
    chat: bool = False,
    **sampling: Any,
) -> Generation:
    """Generate a continuation of ``prompt``.

    Args:
        model: a stateful LM.
        prompt: text (encoded with the model's tokenizer) or token ids.
        state: a state to continue from.
        chat: wrap a text prompt as one user turn of the chat template.
        **sampling: fields of :class:`SamplingParams` (max_new_tokens, temperature, top_k,
            top_p, stop, seed).
    """
    params = SamplingParams(**sampling)
    tok = model.tokenizer
    if isinstance(prompt, str):
        ids = tok.chat([{"role": "user", "content": prompt}]) if chat else tok.encode(prompt, bos=state is None)
    else:
        ids = [int(i) for i in prompt]
    result: dict = {}
    for _ in stream_generate(model, ids, params, state=state, result=result):
        pass
    return result["generation"]
