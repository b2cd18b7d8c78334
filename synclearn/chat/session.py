"""ChatSession: multi-turn chat over a stateful model, safe to serve while a learner writes.

For MCSD the recurrent state carries across turns, so a new turn costs only its own tokens
(the history is never re-read); Hugging Face models carry their KV cache the same way.
Every decode step and prefill runs under the model's read lock
(:mod:`synclearn.learn.guard`), so it computes from exactly one weight version; each reply
records the versions of its first and last token. Completed turns are appended to the
InteractionLog (if one is given) and the reply carries the new row's id.

The load signal a learner's governor reads (:mod:`synclearn.learn.sync`) is this interface:
``log``, ``busy`` (requests in flight), ``wait_idle(timeout)`` and ``add_listener(fn)`` /
``remove_listener(fn)`` (``fn(interaction_id)`` after every logged turn). Anything offering it
-- e.g. a server's aggregate over many sessions -- can be attached to. Turns of one session
are serialized.

Replies never contain NUL (the log refuses it): the byte tokenizer never samples byte 0 here,
and any tokenizer's output stops at a NUL character.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from synclearn.learn.guard import guard_for
from synclearn.model.generate import SamplingParams, stream_generate
from synclearn.model.tokenizer import ByteTokenizer


@dataclass
class Reply:
    """One answer.

    Attributes:
        text: the reply. interaction_id: its log row id (None without a log).
        versions: (weight version of the first token, of the last token).
        prompt_tokens / completion_tokens: token counts of the turn.
        stop_reason: "stop_token", "stop_string" or "max_tokens".
        ttft_s: time to first token; token_times_s: seconds between successive tokens.
        sparse: how decoding ran: None (dense) or e.g. "predictor k=51/512" (neurons per MLP).
    """

    text: str
    interaction_id: int | None
    versions: tuple[int, int]
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str
    ttft_s: float = 0.0
    token_times_s: list[float] = field(default_factory=list)
    sparse: str | None = None


class ChatSession:
    """A conversation with ``model`` (an MCSD model or a wrapped HF causal LM).

    Args:
        model: the stateful model; may be learning at the same time.
        log: an :class:`~synclearn.memory.InteractionLog`, or None to log nothing.
        session_id: the log's session id (default: a new UUID).
        system: an optional system message opening the conversation.
        sparse: decode with only ``sparse.k`` neurons per MLP (a
            :class:`~synclearn.model.neurons.SparseSpec`, or a share of each MLP's neurons;
            MCSD models); prefill stays dense. Each reply says how it decoded (``Reply.sparse``).
        sparse_mode: with a share: how the neurons are chosen ("predictor" or "topk").
        **sampling: default :class:`SamplingParams` fields (max_new_tokens, temperature, ...).
    """

    def __init__(self, model: Any, log: Any = None, *, session_id: str | None = None, system: str | None = None,
                 sparse: Any = None, sparse_mode: str = "predictor", **sampling: Any) -> None:
        self.model, self.log = model, log
        if isinstance(sparse, (int, float)) and not isinstance(sparse, bool):
            from synclearn.model.neurons import SparseSpec

            sparse = SparseSpec.share_of(model, sparse, sparse_mode)
        self.sparse = sparse
        self.session_id = session_id or uuid.uuid4().hex
        self.system = system
        if isinstance(getattr(model, "tokenizer", None), ByteTokenizer):
            sampling.setdefault("ban", (0,))  # the NUL byte
        self.defaults = SamplingParams(**sampling)
        self.guard = guard_for(model)
        self.tokenizer = model.tokenizer
        self.state: Any = None
        self.turn = 0
        self.history: list[dict[str, str]] = []
        self.last_reply: Reply | None = None
        self._turn_lock = threading.Lock()
        self._busy = 0
        self._idle = threading.Condition()
        self._listeners: list = []  # called with each new interaction id (the attached learner)
        self._cuda_stream: Any = None

    # -- load signals for the learner's governor -------------------------------------------------
    def add_listener(self, fn: Any) -> None:
        """Call ``fn(interaction_id)`` after every logged turn."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Any) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    @property
    def busy(self) -> int:
        """Requests in flight."""
        return self._busy

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no request is in flight (or timeout); True when idle."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def _enter(self) -> None:
        with self._idle:
            self._busy += 1

    def _leave(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    # -- guarded model calls -------------------------------------------------------------------
    def _serving(self):
        """On CUDA, the model calls run on a high-priority stream of this session's (an attached
        learner runs on a low-priority one), so the GPU schedules serving kernels first."""
        device = self.model.device
        if device.type != "cuda":
            return contextlib.nullcontext()
        if self._cuda_stream is None:
            # lower numbers run first; out-of-range values map to the highest priority there is
            self._cuda_stream = torch.cuda.Stream(device=device, priority=-100)
        return torch.cuda.stream(self._cuda_stream)

    def _sync(self) -> None:
        if self.model.device.type == "cuda":  # kernels must finish before the lock is released
            torch.cuda.current_stream().synchronize()

    def _prefill(self, ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        with self.guard.read() as version, self._serving():
            out = self.model.prefill(ids, state)
            self._sync()
        self._versions.append(version)
        return out

    def _step(self, ids_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        with self.guard.read() as version, self._serving():
            out = self.model.step(ids_t, state) if self.sparse is None else self.model.step(ids_t, state, sparse=self.sparse)
            self._sync()
        self._versions.append(version)
        self._stamps.append(time.perf_counter())
        return out

    # -- the conversation ---------------------------------------------------------------------------
    def _prompt_ids(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"message must be str, got {type(text).__name__}")
        messages = [{"role": "user", "content": text}]
        prefix: list[int] = []
        if self.state is None:
            if self.system:
                messages.insert(0, {"role": "system", "content": self.system})
            bos = getattr(self.tokenizer, "BOS", None)
            prefix = [bos] if bos is not None else []
        elif hasattr(self.tokenizer, "continue_chat"):  # a template with a preamble (bos, default system)
            return self.tokenizer.continue_chat(messages)
        return prefix + self.tokenizer.chat(messages)

    def stream(self, text: str, **sampling: Any) -> Iterator[str]:
        """Answer ``text``, yielding text pieces as they are generated; the finished
        :class:`Reply` is ``self.last_reply`` afterwards."""
        params = SamplingParams(**{**self.defaults.__dict__, **sampling})
        if "\x00" not in params.stop:
            params = SamplingParams(**{**params.__dict__, "stop": [*params.stop, "\x00"]})
        prompt = self._prompt_ids(text)
        self._enter()
        try:
            with self._turn_lock:
                yield from self._run_turn(text, prompt, params)
        finally:
            self._leave()

    def send(self, text: str, **sampling: Any) -> Reply:
        """Answer ``text`` and return the whole :class:`Reply`."""
        for _ in self.stream(text, **sampling):
            pass
        assert self.last_reply is not None
        return self.last_reply

    def _run_turn(self, text: str, prompt: list[int], params: SamplingParams) -> Iterator[str]:
        self._versions: list[int] = []
        self._stamps: list[float] = []
        t0 = time.perf_counter()
        result: dict = {}
        state = self.state if self.state is not None else self.model.init_state(1)
        yield from stream_generate(self.model, prompt, params, state=state, decode_step=self._step,
                                   result=result, prefill=self._prefill)
        gen = result["generation"]
        state = gen.state
        end = getattr(self.tokenizer, "END", None)
        if end is not None and (not gen.ids or gen.ids[-1] != end):
            # close the turn in the state so the next one follows the chat template
            with torch.inference_mode():
                _, state = self._prefill(torch.tensor([[end]], device=self.model.device), state)
        rid = None
        if self.log is not None:  # first: if the log refuses the turn, the session stays as it was
            rid = self.log.append(session_id=self.session_id, prompt=text, response=gen.text,
                                  tokens=len(prompt) + len(gen.ids))
        self.state = state
        self.turn += 1
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": gen.text}]
        if rid is not None:
            for listener in list(self._listeners):
                listener(rid)
        stamps = self._stamps
        ttft = (stamps[0] - t0) if stamps else time.perf_counter() - t0
        self.last_reply = Reply(gen.text, rid, (self._versions[0], self._versions[-1]), len(prompt), len(gen.ids),
                                gen.stop_reason, ttft, [b - a for a, b in zip(stamps, stamps[1:])],
                                self._sparse_label())

    def _sparse_label(self) -> str | None:
        if self.sparse is None:
            return None
        d_ff = getattr(getattr(self.model, "config", None), "d_ff", None)
        return f"{self.sparse.mode} k={self.sparse.k}" + (f"/{d_ff}" if d_ff else "")

    def load_history(self, messages: list[dict[str, str]], system: str | None = None) -> None:
        """Position the session after an earlier conversation (not logged again): the messages
        (alternating user/assistant, each assistant turn closed) are prefilled into the state."""
        tok = self.tokenizer
        msgs = ([{"role": "system", "content": system}] if system is not None else []) + list(messages)
        bos = getattr(tok, "BOS", None)
        ids = ([bos] if bos is not None else []) + tok.chat(msgs, add_generation_prompt=False)
        with self._turn_lock:
            self._versions, self._stamps = [], []
            with torch.inference_mode():
                _, state = self._prefill(torch.tensor([ids], device=self.model.device), self.model.init_state(1))
            self.system = system
            self.state, self.history, self.turn = state, list(messages), len(messages) // 2

    def reset(self) -> None:
        """Forget the conversation state (the log keeps what was said)."""
        with self._turn_lock:
            self.state, self.turn, self.history = None, 0, []
