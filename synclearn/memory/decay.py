"""Decay: memories fade unless rehearsed; faded records leave the replay pool (and, by policy,
the log).

Each logged interaction has a memory strength S (seconds); its retention t seconds after its
last rehearsal is R = exp(-t / S) (:func:`synclearn.memory.log.retention`), and every replay
raises S (spacing effect, :func:`synclearn.memory.log.rehearsed_strength`). The
retention-aware replay policy replays what is about to fade; :class:`Fading` decides what has
faded for good.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from synclearn.memory.log import retention
from synclearn.memory.replay import Candidates


class Fading:
    """Records whose retention fell below ``threshold`` have faded.

    Args:
        threshold: retention below which a record has faded (0 < threshold < 1).
        delete_from_log: also delete faded records from the log (secure delete) on ``sweep``.
    """

    def __init__(self, threshold: float = 0.05, *, delete_from_log: bool = False) -> None:
        if not 0 < threshold < 1:
            raise ValueError(f"threshold={threshold!r} (expected 0 < threshold < 1)")
        self.threshold, self.delete_from_log = threshold, delete_from_log

    def alive(self, candidates: Candidates, now: float) -> np.ndarray:
        """[N] bool: which candidates are still above the threshold."""
        return retention(candidates.strength, now - candidates.rehearsed_at) >= self.threshold

    def faded(self, log: Any, now: float | None = None) -> list[int]:
        """Ids of the learned records that have faded."""
        now = time.time() if now is None else now
        c = log.replay_candidates()
        return [int(i) for i in c.ids[~self.alive(c, now)]]

    def sweep(self, log: Any, now: float | None = None) -> list[int]:
        """The faded ids; deleted from the log when ``delete_from_log`` (nothing is unlearned:
        fading is not a forget request, the weights keep what they consolidated)."""
        ids = self.faded(log, now)
        if ids and self.delete_from_log:
            log.delete(ids=ids, reason="faded below retention threshold")
        return ids

    def pool(self, policy: Any) -> Any:
        """Wrap a replay policy so that faded records are never replayed."""
        def alive_only(candidates: Candidates, k: int, rng: np.random.Generator, now: float) -> list[int]:
            keep = self.alive(candidates, now)
            sub = Candidates(**{f: getattr(candidates, f)[keep] for f in
                                ("ids", "created_at", "loss", "replay_count", "strength", "rehearsed_at")})
            return policy(sub, min(k, len(sub)), rng, now)
        alive_only.__name__ = f"fading({getattr(policy, '__name__', type(policy).__name__)})"
        return alive_only
