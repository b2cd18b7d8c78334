"""The strength model of a logged row and the replay candidates' columns.

Strength (the log's ``strength`` column) is the stability ``S`` of an exponential forgetting
curve, in seconds: a row's retention ``t`` seconds after its last rehearsal is ``exp(-t / S)``
(:func:`retention`). A new row starts at ``INITIAL_STRENGTH_S``; each replay replaces ``S``
by :func:`rehearsed_strength`. :class:`Candidates` holds the replay metadata of the learned
rows as numpy columns (no text); the log builds it (:meth:`InteractionLog.replay_candidates`)
and the replay policies (:mod:`synclearn.memory.replay`) read it. Both modules import this
one, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

INITIAL_STRENGTH_S = 86_400.0  # a new row's retention falls to 1/e one day after it is learned
REHEARSAL_GAIN = 2.0  # how much a fully faded memory's stability grows when rehearsed


def retention(strength_s: Any, elapsed_s: Any) -> Any:
    """Fraction retained ``elapsed_s`` seconds after the last rehearsal: ``exp(-t / S)``.

    Works elementwise on floats or numpy arrays; negative elapsed times count as 0.
    """
    return np.exp(-np.maximum(elapsed_s, 0.0) / strength_s)


def rehearsed_strength(strength_s: float, elapsed_s: float) -> float:
    """Stability after a rehearsal: ``S * (1 + REHEARSAL_GAIN * (1 - retention))``.

    The spacing effect: replaying right after the last rehearsal changes little;
    replaying a nearly faded memory multiplies its stability by up to
    ``1 + REHEARSAL_GAIN``.
    """
    return float(strength_s * (1.0 + REHEARSAL_GAIN * (1.0 - retention(strength_s, elapsed_s))))



_FIELDS = ("ids", "created_at", "loss", "replay_count", "strength", "rehearsed_at")


@dataclass(frozen=True)
class Candidates:
    """Replay metadata of N rows, one numpy array per column (no text).

    Attributes:
        ids: [N] int64 row ids, ascending.
        created_at: [N] float64 Unix seconds.
        loss: [N] float64 last recorded training loss, NaN if unknown.
        replay_count: [N] int64.
        strength: [N] float64 forgetting-curve stability in seconds.
        rehearsed_at: [N] float64 last rehearsal (else learned, else created) time.
    """

    ids: np.ndarray
    created_at: np.ndarray
    loss: np.ndarray
    replay_count: np.ndarray
    strength: np.ndarray
    rehearsed_at: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_matrix(cls, m: np.ndarray) -> Candidates:
        """From a [N, 6] float64 matrix with the columns in field order."""
        return cls(
            ids=m[:, 0].astype(np.int64), created_at=m[:, 1].copy(), loss=m[:, 2].copy(),
            replay_count=m[:, 3].astype(np.int64), strength=m[:, 4].copy(), rehearsed_at=m[:, 5].copy(),
        )  # fmt: skip

    def updated(self, changed: Candidates, drop: np.ndarray) -> Candidates:
        """A copy with ``changed``'s rows inserted or replacing the same ids, and ``drop`` ids removed."""
        cols = {f: getattr(self, f) for f in _FIELDS}
        if len(changed):
            order = np.argsort(changed.ids, kind="stable")
            new = {f: getattr(changed, f)[order] for f in _FIELDS}
            pos = np.searchsorted(self.ids, new["ids"])
            hit = np.zeros(len(pos), dtype=bool)
            inside = pos < len(self.ids)
            hit[inside] = self.ids[pos[inside]] == new["ids"][inside]
            cols = {f: c.copy() for f, c in cols.items()}
            for f in _FIELDS:
                cols[f][pos[hit]] = new[f][hit]
            if not hit.all():
                cols = {f: np.insert(cols[f], pos[~hit], new[f][~hit]) for f in _FIELDS}
        if len(drop):
            pos = np.searchsorted(cols["ids"], drop)
            inside = pos < len(cols["ids"])
            pos = pos[inside][cols["ids"][pos[inside]] == drop[inside]]
            cols = {f: np.delete(c, pos) for f, c in cols.items()}
        return Candidates(**cols)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> Candidates:
        """From row dicts as ``InteractionLog`` returns them."""
        def rehearsed_at(r: Mapping[str, Any]) -> float:
            for key in ("last_rehearsed_at", "learned_at", "created_at"):
                if r.get(key) is not None:
                    return r[key]
            raise KeyError("a candidate row needs created_at")

        m = [
            (r["id"], r["created_at"], r.get("loss"), r.get("replay_count", 0), r["strength"], rehearsed_at(r))
            for r in rows
        ]
        return cls.from_matrix(np.array(m, dtype=np.float64).reshape(len(m), 6))


# --------------------------------------------------------------------------- sampling


