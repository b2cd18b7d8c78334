"""Serving latency with the learner detached vs attached, measured on the same prompts.

The prompts are served back to back (each a fresh conversation) in alternating blocks: a
block with the learner detached, then the same block with it attached and learning flat out
(``idle_replay``: it replays the log whenever it has nothing new, so it is busy the whole
time), and so on. Alternating blocks keep a slow drift of the machine's load out of the
comparison. Per-token latency is the time between successive generated tokens
(``Reply.token_times_s``); the overhead is attached / detached - 1 of the median (and p99).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class LatencyResult:
    """Per-token latencies (ms) and TTFTs (ms) of both conditions, and when each token came.

    ``times_s`` / ``latency_ms`` / ``attached``: one entry per token in serving order (seconds
    since the start, milliseconds, learner attached?), for :func:`synclearn.eval.plot_latency`.
    """

    detached_ms: list[float] = field(default_factory=list)
    attached_ms: list[float] = field(default_factory=list)
    ttft_detached_ms: list[float] = field(default_factory=list)
    ttft_attached_ms: list[float] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    attached: list[bool] = field(default_factory=list)
    learner_steps: int = 0

    def summary(self) -> dict[str, float]:
        """Flat scalars: p50/p99 per condition, overheads, TTFT medians, steps taken while serving."""
        out: dict[str, float] = {}
        for name, values in (("detached", self.detached_ms), ("attached", self.attached_ms)):
            arr = np.asarray(values, dtype=float)
            out[f"token_ms_p50_{name}"] = float(np.median(arr)) if arr.size else float("nan")
            out[f"token_ms_p99_{name}"] = float(np.percentile(arr, 99)) if arr.size else float("nan")
        for name, values in (("detached", self.ttft_detached_ms), ("attached", self.ttft_attached_ms)):
            out[f"ttft_ms_p50_{name}"] = float(np.median(values)) if values else float("nan")
        for q in ("p50", "p99"):
            out[f"latency_overhead_{q}"] = out[f"token_ms_{q}_attached"] / out[f"token_ms_{q}_detached"] - 1.0
        out["latency_learner_steps"] = float(self.learner_steps)
        return out


def measure_latency(session: Any, learner: Any, prompts: Sequence[str], *, block: int = 4,
                    attach_options: dict[str, Any] | None = None) -> LatencyResult:
    """Serve ``prompts`` detached and attached in alternating blocks of ``block`` prompts.

    Args:
        session: the ChatSession to serve on (its log receives the turns; the attached learner
            learns from them and replays).
        learner: the Learner, detached on entry and on return.
        prompts: user messages, each served as a new conversation, once per condition.
        block: prompts per block.
        attach_options: :class:`~synclearn.learn.sync.LearnerHandle` settings (``idle_replay`` is
            forced on so that the learner is busy throughout).
    """
    options = {**(attach_options or {}), "idle_replay": True, "max_steps": None}
    out, t0 = LatencyResult(), time.perf_counter()
    for start in range(0, len(prompts), block):
        chunk = prompts[start : start + block]
        for attached in (False, True):
            handle = learner.attach(session, **options) if attached else None
            try:
                for prompt in chunk:
                    session.reset()
                    reply = session.send(prompt)
                    stamps = np.cumsum([reply.ttft_s, *reply.token_times_s])
                    sent = time.perf_counter() - t0 - stamps[-1]
                    lat = [1000 * t for t in reply.token_times_s]
                    (out.attached_ms if attached else out.detached_ms).extend(lat)
                    (out.ttft_attached_ms if attached else out.ttft_detached_ms).append(1000 * reply.ttft_s)
                    out.times_s.extend(float(sent + s) for s in stamps[1:])
                    out.latency_ms.extend(lat)
                    out.attached.extend([attached] * len(lat))
            finally:
                if handle is not None:
                    out.learner_steps += handle.detach()["steps"]
    return out
