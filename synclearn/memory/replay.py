"""Replay: which logged interactions to train on again, and the batches that mix them in.

The policy contract (one signature for every policy)::

    policy(candidates: Candidates, k: int, rng: numpy.random.Generator, now: float) -> list[int]

* ``candidates``: the rows eligible for replay (learned rows), as columns; see
  ``Candidates``. Policies must not modify it.
* ``k``: how many ids to return; a policy returns ``min(k, len(candidates))``
  distinct ids, in the order it drew them.
* ``rng``: the only source of randomness, so a seeded generator makes the
  choice deterministic.
* ``now``: the current time in Unix seconds (recency and retention depend on it).

Policies (all sample without replacement; weighted ones by successive draws, each
draw picking a remaining row with probability proportional to its weight):

* ``uniform``: every candidate equally likely.
* ``Reservoir(capacity)``: a bounded pool fed online with the candidates it has
  not seen yet (Algorithm R, so every row seen so far is in the pool with
  probability ``capacity / seen``); samples uniformly from the pool.
* ``RecencyWeighted(half_life_s)``: weight ``0.5 ** (age / half_life_s)``.
* ``LossPrioritized(alpha, eps)``: weight ``(loss + eps) ** alpha``; rows whose
  loss is unknown get the largest known loss (so they are tried soon).
* ``RetentionAware(power)``: weight ``(1 - retention) ** power``, retention from
  the stored strength (``log.retention``): replay what has faded most.
* ``Spaced(interval_s, power)``: weight ``(elapsed / (interval_s * 2 ** replay_count)) ** power``:
  spaced repetition, every replay doubling the wait before the next.

``ReplayBatchBuilder`` mixes not-yet-learned rows with replayed ones and returns
exactly what ``Learner.step(examples)`` takes: ``[{"id", "prompt", "response"}]``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from synclearn.memory.strength import Candidates, retention

if TYPE_CHECKING:
    from synclearn.memory.log import InteractionLog

logger = logging.getLogger(__name__)

#: batches in a row without ``min_gain`` on a new row's best loss that end its rehearsal
STALL_STEPS = 2

Policy = Callable[["Candidates", int, np.random.Generator, float], Sequence[int]]


def weighted_sample(ids: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """Successive sampling without replacement, in one pass (Efraimidis-Spirakis keys).

    Drawing ``u ~ U(0,1)`` per row and taking the k largest ``log(u) / w`` gives the
    same distribution as drawing k times, each time a remaining row with probability
    ``w / sum(remaining w)`` (see ``weighted_sample_naive``). Zero-weight rows
    come last, only if k exceeds the number of positive weights.
    """
    k = min(int(k), len(ids))
    if k <= 0:
        return []
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("replay weights must be finite and >= 0")
    u = rng.random(len(ids))
    with np.errstate(divide="ignore"):
        keys = np.log(u) / w  # w = 0 -> -inf
    keys[np.isnan(keys)] = -np.inf
    top = np.argpartition(-keys, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
    top = top[np.lexsort((ids[top], -keys[top]))]  # largest key first; ties by id
    return [int(i) for i in ids[top]]


def weighted_sample_naive(ids: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """Reference for ``weighted_sample``: k successive draws, each proportional to weight."""
    ids, w = list(ids), np.asarray(weights, dtype=np.float64).copy()
    out = []
    for _ in range(min(k, len(ids))):
        p = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
        j = int(rng.choice(len(w), p=p))
        out.append(int(ids.pop(j)))
        w = np.delete(w, j)
    return out


def uniform(candidates: Candidates, k: int, rng: np.random.Generator, now: float) -> list[int]:
    """Every candidate equally likely, without replacement."""
    k = min(int(k), len(candidates))
    return [int(i) for i in rng.choice(candidates.ids, size=k, replace=False)] if k > 0 else []


class RecencyWeighted:
    """Weight ``0.5 ** (age / half_life_s)``, age = ``now - created_at`` (>= 0)."""

    def __init__(self, half_life_s: float = 86_400.0) -> None:
        if not half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0, got {half_life_s!r}")
        self.half_life_s = float(half_life_s)

    def weights(self, candidates: Candidates, now: float) -> np.ndarray:
        age = np.maximum(now - candidates.created_at, 0.0)
        return np.exp2(-age / self.half_life_s)

    def __call__(self, candidates: Candidates, k: int, rng: np.random.Generator, now: float) -> list[int]:
        return weighted_sample(candidates.ids, self.weights(candidates, now), k, rng)


class LossPrioritized:
    """Weight ``(loss + eps) ** alpha`` (prioritized replay); unknown loss -> max known loss."""

    def __init__(self, alpha: float = 1.0, eps: float = 1e-3) -> None:
        if not alpha >= 0 or not eps > 0:
            raise ValueError(f"need alpha >= 0 and eps > 0, got alpha={alpha!r}, eps={eps!r}")
        self.alpha, self.eps = float(alpha), float(eps)

    def weights(self, candidates: Candidates, now: float) -> np.ndarray:
        loss = np.maximum(candidates.loss, 0.0)
        known = ~np.isnan(loss)
        fill = loss[known].max() if known.any() else 1.0
        return (np.where(known, loss, fill) + self.eps) ** self.alpha

    def __call__(self, candidates: Candidates, k: int, rng: np.random.Generator, now: float) -> list[int]:
        return weighted_sample(candidates.ids, self.weights(candidates, now), k, rng)


class RetentionAware:
    """Weight ``(1 - retention) ** power``: replay what has faded most since its last rehearsal.

    If every candidate is fully retained (all weights 0), falls back to uniform.
    ``retention_fn(strength_s, elapsed_s)`` defaults to ``log.retention``.
    """

    def __init__(self, power: float = 1.0, retention_fn: Callable[[Any, Any], Any] = retention) -> None:
        if not power > 0:
            raise ValueError(f"power must be > 0, got {power!r}")
        self.power, self.retention_fn = float(power), retention_fn

    def weights(self, candidates: Candidates, now: float) -> np.ndarray:
        r = self.retention_fn(candidates.strength, now - candidates.rehearsed_at)
        return np.clip(1.0 - r, 0.0, 1.0) ** self.power

    def __call__(self, candidates: Candidates, k: int, rng: np.random.Generator, now: float) -> list[int]:
        w = self.weights(candidates, now)
        if len(w) and not (w > 0).any():
            return uniform(candidates, k, rng, now)
        return weighted_sample(candidates.ids, w, k, rng)


class Spaced:
    """Spaced repetition (Leitner-style): a row is due ``interval_s * 2 ** replay_count`` seconds
    after its last rehearsal; weight ``(elapsed / interval) ** power``, so a new row comes back
    soon after it was learned, and every replay doubles the wait before the next one.

    Unlike ``RetentionAware`` (whose stabilities are the log's, a day for a new row), the
    schedule's scale is the policy's own ``interval_s``: seconds for a benchmark stream, hours
    for a deployment.
    """

    def __init__(self, interval_s: float = 60.0, power: float = 1.0) -> None:
        if not interval_s > 0 or not power > 0:
            raise ValueError(f"need interval_s > 0 and power > 0, got interval_s={interval_s!r}, power={power!r}")
        self.interval_s, self.power = float(interval_s), float(power)

    def weights(self, candidates: Candidates, now: float) -> np.ndarray:
        elapsed = np.maximum(now - candidates.rehearsed_at, 0.0)
        due = elapsed / (self.interval_s * np.exp2(np.minimum(candidates.replay_count, 60)))
        return due**self.power

    def __call__(self, candidates: Candidates, k: int, rng: np.random.Generator, now: float) -> list[int]:
        w = self.weights(candidates, now)
        if len(w) and not (w > 0).any():
            return uniform(candidates, k, rng, now)
        return weighted_sample(candidates.ids, w, k, rng)


class Reservoir:
    """A bounded pool of at most ``capacity`` ids, fed online (Algorithm R); uniform draws from it.

    Each call first offers the candidates with ids above the largest id seen so far
    (the rows learned since the last call), then drops pool ids that are no longer
    candidates (forgotten), then samples ``k`` uniformly from the pool.
    """

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self.pool = np.empty(0, dtype=np.int64)
        self.seen = 0  # how many ids have been offered
        self.max_seen = -1

    def offer(self, ids: np.ndarray, rng: np.random.Generator) -> None:
        """Feeds a stream of new ids, in order. Vectorized Algorithm R."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return
        fill = min(self.capacity - len(self.pool), len(ids))
        self.pool = np.concatenate([self.pool, ids[:fill]])
        rest = ids[fill:]
        n = self.seen + fill + 1 + np.arange(len(rest))  # 1-based position of each item in the stream
        slot = (rng.random(len(rest)) * n).astype(np.int64)  # uniform in [0, n)
        keep = slot < self.capacity
        slots, items = slot[keep], rest[keep]
        if len(slots):  # sequential replacement: the last item written to a slot wins
            last_slot, last = np.unique(slots[::-1], return_index=True)
            self.pool[last_slot] = items[::-1][last]
        self.seen += len(ids)
        self.max_seen = max(self.max_seen, int(ids.max()))

    def __call__(self, candidates: Candidates, k: int, rng: np.random.Generator, now: float) -> list[int]:
        """Feeds the unseen candidates, forgets deleted ids, draws k uniformly from the pool."""
        self.offer(candidates.ids[candidates.ids > self.max_seen], rng)
        self.pool = self.pool[np.isin(self.pool, candidates.ids)]
        k = min(int(k), len(self.pool))
        return [int(i) for i in rng.choice(self.pool, size=k, replace=False)] if k > 0 else []


def reservoir_offer_naive(
    pool: list[int], seen: int, capacity: int, ids: Sequence[int], rng: np.random.Generator
) -> list[int]:
    """Reference for ``Reservoir.offer``: Algorithm R, one item at a time, same random draws."""
    pool = list(pool)
    fill = min(capacity - len(pool), len(ids))
    pool += [int(i) for i in ids[:fill]]
    rest = ids[fill:]
    u = rng.random(len(rest))
    for j, item in enumerate(rest):
        n = seen + fill + j + 1  # this item's 1-based position in the stream
        slot = int(u[j] * n)  # uniform in [0, n)
        if slot < capacity:
            pool[slot] = int(item)
    return pool


# --------------------------------------------------------------------------- batches


class ReplayBatchBuilder:
    """Builds training batches: new (not yet learned) rows plus replayed ones.

    A batch holds ``round(replay_ratio * batch_size)`` replayed rows and new rows
    for the rest; if either kind runs short, the other fills the batch. New rows
    are taken oldest first. ``next_batch`` only reads: calling it again before
    ``commit`` returns the same batch (the generator is seeded by ``(seed, step)``),
    so a failed ``Learner.step`` can simply be retried.

    A new row stays new for up to ``new_repeats`` committed batches (each with a fresh
    replay draw) and is marked learned after the last, as soon as its recorded loss falls
    below ``learned_loss``, or once :data:`STALL_STEPS` steps in a row each left its loss above
    ``(1 - min_gain)`` times its best so far (the row has stopped improving; one step alone
    does not tell: the first step on a row often barely moves its loss, with fresh replay around
    it, and ending there left ~1 in 4 taught facts unlearned): a lesson is rehearsed until it has
    been taken in, as a person repeats a new name a few times, and what cannot be learned
    quickly does not hold up the rest. With ``until_reproduced`` the early end is instead the
    model reproducing the row (``commit``'s ``reproduced``: every response token its most
    likely next token before the step, so its greedy reply is the response); a mean loss can be
    low while the one token that carries the fact is still wrong.

    Args:
        log: The interaction log.
        policy: A replay policy (see the module docstring).
        replay_ratio: Fraction of each batch drawn from replay, in [0, 1].
        batch_size: Examples per batch.
        seed: Seed of the replay draws.
        use_corrections: Train on the user's correction instead of the logged
            response when one exists.
        new_repeats: Batches each new row is trained in before it counts as learned.
        learned_loss: A new row counts as learned early once its loss (as recorded by
            ``commit``, measured before that step's update) is below this (None: never early).
        min_gain: A new row also counts as learned once :data:`STALL_STEPS` batches in a row
            left its loss above ``(1 - min_gain)`` times its best loss so far (None: no plateau rule).
        max_attempts: Rejected batches (failed or skipped steps, see ``reject``) a new row may be
            in, alone, before it is set aside unlearned.
        until_reproduced: A new row counts as learned early once the model reproduces it
            (instead of by ``learned_loss``); ``min_gain`` still ends a row that stopped improving.
    """

    def __init__(
        self,
        log: InteractionLog,
        policy: Policy = uniform,
        *,
        replay_ratio: float = 0.5,
        batch_size: int = 8,
        seed: int = 0,
        use_corrections: bool = True,
        new_repeats: int = 1,
        learned_loss: float | None = None,
        min_gain: float | None = None,
        max_attempts: int = 3,
        until_reproduced: bool = False,
    ) -> None:
        if not 0.0 <= replay_ratio <= 1.0:
            raise ValueError(f"replay_ratio must be in [0, 1], got {replay_ratio!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(new_repeats, int) or new_repeats < 1:
            raise ValueError(f"new_repeats must be a positive int, got {new_repeats!r}")
        if learned_loss is not None and not learned_loss > 0:
            raise ValueError(f"learned_loss must be > 0 or None, got {learned_loss!r}")
        if min_gain is not None and not 0 < min_gain < 1:
            raise ValueError(f"min_gain must be in (0, 1) or None, got {min_gain!r}")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be a positive int, got {max_attempts!r}")
        self.new_repeats, self.learned_loss, self.min_gain = new_repeats, learned_loss, min_gain
        self.until_reproduced = bool(until_reproduced)
        self._repeats: dict[int, tuple[int, float, int]] = {}  # new row id -> (batches, best loss, stalled batches)
        self.log, self.policy = log, policy
        self.replay_ratio, self.batch_size, self.seed = float(replay_ratio), batch_size, int(seed)
        self.use_corrections = use_corrections
        self.step = 0
        self.max_attempts = max_attempts
        self._pending: tuple[list[int], list[int]] | None = None
        self._failures: dict[int, int] = {}  # new row id -> rejected batches it was in
        self.set_aside: set[int] = set()  # new rows that failed max_attempts times; left unlearned

    def next_batch(self, now: float | None = None) -> list[dict[str, Any]]:
        """The next batch: ``[{"id": int, "prompt": str, "response": str}, ...]``, new rows first."""
        now = time.time() if now is None else now
        rng = np.random.default_rng([self.seed, self.step])
        new_rows = [r for r in self.log.unlearned(self.batch_size + len(self.set_aside))
                    if r["id"] not in self.set_aside][: self.batch_size]
        suspects = [r for r in new_rows if r["id"] in self._failures]
        if suspects:  # rows of a rejected batch come back one at a time, to find the one that fails
            new_rows = suspects[:1]
        live = {r["id"] for r in new_rows}
        self._repeats = {rid: n for rid, n in self._repeats.items() if rid in live}  # forgotten rows drop out
        candidates = self.log.replay_candidates()
        want_replay = round(self.replay_ratio * self.batch_size)
        n_new = min(len(new_rows), self.batch_size - min(want_replay, len(candidates)))
        n_replay = min(len(candidates), self.batch_size - n_new)
        replay_ids = list(self.policy(candidates, n_replay, rng, now)) if n_replay else []
        rows = new_rows[:n_new] + self.log.get_many(replay_ids)
        self._pending = ([r["id"] for r in new_rows[:n_new]], [r["id"] for r in rows[n_new:]])
        return [self._example(r) for r in rows]

    def reject(self, batch: Sequence[Mapping[str, Any]], reason: str | None = None) -> None:
        """Records that ``batch`` (the last ``next_batch``) was NOT learned (the step failed or
        was skipped): no row is marked learned or replayed; the next batch is a fresh draw. A new
        row in ``max_attempts`` rejected batches is set aside (left unlearned, not offered again
        by this builder), so one poisoned row cannot stall learning. The new rows of a rejected
        batch are retried one per batch, so only the row that fails alone is set aside."""
        ids = [int(e["id"]) for e in batch]
        if self._pending is None or ids != self._pending[0] + self._pending[1]:
            raise ValueError("reject() takes the batch returned by the last next_batch()")
        alone = len(self._pending[0]) == 1
        for rid in self._pending[0]:
            self._failures[rid] = self._failures.get(rid, 0) + 1 if alone else max(1, self._failures.get(rid, 0))
            if self._failures[rid] >= self.max_attempts:
                self.set_aside.add(rid)
                del self._failures[rid]
                logger.warning("row %d set aside unlearned after %d failed batches (last: %s)", rid,
                               self.max_attempts, reason)
        self._pending = None
        self.step += 1

    @property
    def has_new(self) -> bool:
        """Whether the last ``next_batch`` holds any new (not yet learned) row."""
        return bool(self._pending and self._pending[0])

    def _example(self, row: Mapping[str, Any]) -> dict[str, Any]:
        correction = row["feedback_correction"] if self.use_corrections else None
        return {"id": row["id"], "prompt": row["prompt"], "response": correction or row["response"]}

    def commit(self, batch: Sequence[Mapping[str, Any]], losses: Sequence[float] | None = None,
               now: float | None = None, reproduced: Sequence[bool] | None = None) -> None:  # fmt: skip
        """Records that ``batch`` (the last ``next_batch``) was trained on.

        New rows are marked learned (once trained ``new_repeats`` times, below ``learned_loss``,
        stalled by ``min_gain``, or, with ``until_reproduced``, reproduced: ``reproduced[k]``,
        measured before the step, e.g. :attr:`~synclearn.learn.StepResult.example_reproduced`),
        replayed rows get a replay (count, strength), and per-example ``losses``, if given, are
        stored. Advances the step.
        """
        ids = [int(e["id"]) for e in batch]
        if self._pending is None or ids != self._pending[0] + self._pending[1]:
            raise ValueError("commit() takes the batch returned by the last next_batch()")
        new_ids, replay_ids = self._pending
        now = time.time() if now is None else now
        if losses is not None:
            self.log.record_loss(ids, losses, now=now)
        done = []
        for k, rid in enumerate(new_ids):
            self._failures.pop(rid, None)
            count, best, flat = self._repeats.pop(rid, (0, math.inf, 0))
            loss = float(losses[k]) if losses is not None else math.nan
            if self.until_reproduced:
                learned = reproduced is not None and bool(reproduced[k])
            else:
                learned = loss < self.learned_loss if self.learned_loss is not None else False
            gained = math.isnan(loss) or self.min_gain is None or loss < best * (1.0 - self.min_gain)
            flat = 0 if gained else flat + 1
            if count + 1 >= self.new_repeats or learned or flat >= STALL_STEPS:
                done.append(rid)
            else:
                self._repeats[rid] = (count + 1, min(best, loss), flat)
        self.log.mark_learned(done, now=now)
        self.log.mark_replayed(replay_ids, now=now)
        self._pending = None
        self.step += 1
