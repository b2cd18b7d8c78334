"""The learning side of the InteractionLog: losses, learned marks, replays, replay candidates.

:class:`LogLearning` is a part of :class:`~synclearn.memory.log.InteractionLog` (which
inherits it); every write bumps the log's change counter (``changed_seq``), which keeps the
replay-candidate cache incremental and lets a restored checkpoint unlearn exactly the rows
learned after it (:meth:`LogLearning.unlearn_after`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from synclearn.memory.schema import COLUMNS, LogError, LogInputError, as_id_list, next_seq
from synclearn.memory.strength import Candidates


class LogLearning:
    """What the learner and the replay builder write and read (see module docstring)."""

    def record_loss(self, ids: Sequence[int], losses: Sequence[float] | np.ndarray, now: float | None = None) -> int:
        """Stores the training loss measured on each row; returns how many rows exist to update."""
        id_list = as_id_list(ids)
        values = np.asarray(losses, dtype=np.float64).reshape(-1)
        if values.shape != (len(id_list),):
            raise LogInputError(f"record_loss got {len(id_list)} ids but {values.size} losses")
        if not np.isfinite(values).all():
            raise LogInputError(f"losses must be finite, got {values[~np.isfinite(values)][:5].tolist()}")
        now = time.time() if now is None else now

        def txn(conn: sqlite3.Connection) -> int:
            seq = next_seq(conn)
            params = [(float(v), now, seq, i) for i, v in zip(id_list, values)]
            sql = "UPDATE interactions SET loss = ?, loss_at = ?, changed_seq = ? WHERE id = ?"
            return conn.executemany(sql, params).rowcount

        return self._write(txn)

    def mark_learned(self, ids: Sequence[int], now: float | None = None) -> int:
        """Records that ``Learner.step`` trained on these rows (a first rehearsal); returns rows updated."""
        id_list = as_id_list(ids)
        now = time.time() if now is None else now
        return self._write(
            lambda conn: conn.execute(
                "UPDATE interactions SET learned_at = coalesce(learned_at, ?1), last_rehearsed_at = ?2, "
                "changed_seq = ?3, learned_seq = coalesce(learned_seq, ?3) WHERE id IN (SELECT value FROM json_each(?4))",
                (now, now, next_seq(conn), json.dumps(id_list)),
            ).rowcount
        )

    def change_seq(self) -> int:
        """The log's change counter: every write raises it. A checkpoint records it so that
        :meth:`unlearn_after` can tell the rows learned after the checkpoint (clock-independent)."""
        return int(self._query("SELECT seq FROM change_counter")[0]["seq"])

    def unlearn_after(self, seq: int) -> int:
        """Mark rows first learned after change ``seq`` (:meth:`change_seq`) as not learned (e.g.
        the weights were restored from a checkpoint taken at ``seq``, so the learner must take
        them as new); returns how many. Unlike wall-clock times the counter never goes back."""
        return self._unlearn_where("learned_seq > ?", int(seq))

    def unlearn_since(self, t: float) -> int:
        """Mark rows learned after time ``t`` as not learned; returns how many. Prefer
        :meth:`unlearn_after` (wall clocks can jump); this is for checkpoints that recorded no
        change counter."""
        return self._unlearn_where("learned_at > ?", float(t))

    def _unlearn_where(self, condition: str, value: float) -> int:
        """Mark the rows matching ``condition`` (one ``?`` placeholder) as not learned."""
        return self._write(
            lambda conn: conn.execute(
                "UPDATE interactions SET learned_at = NULL, last_rehearsed_at = NULL, learned_seq = NULL, "
                f"changed_seq = ? WHERE {condition}",
                (next_seq(conn), value),
            ).rowcount
        )

    def mark_replayed(self, ids: Sequence[int], now: float | None = None) -> int:
        """Counts one replay of each row and updates its strength; returns rows updated.

        Duplicate ids count once. Ids that no longer exist (forgotten) are skipped.
        """
        id_list = sorted(set(as_id_list(ids)))
        now = time.time() if now is None else now

        def txn(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "SELECT id, strength, coalesce(last_rehearsed_at, learned_at, created_at) FROM interactions "
                "WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(id_list),),
            ).fetchall()
            seq = next_seq(conn)
            updates = [(float(self.rehearse(s, now - t)), now, seq, i) for i, s, t in rows]
            bad = [u[0] for u in updates if not (np.isfinite(u[0]) and u[0] > 0)]
            if bad:
                raise LogError(f"rehearse() must return a finite strength > 0, returned {bad[0]!r}")
            conn.executemany(
                "UPDATE interactions SET replay_count = replay_count + 1, strength = ?, last_rehearsed_at = ?, "
                "changed_seq = ? WHERE id = ?",
                updates,
            )
            return len(updates)

        return self._write(txn)

    def unlearned(self, limit: int) -> list[dict[str, Any]]:
        """The oldest rows not yet marked learned that have something to learn (a reply or a
        correction), oldest first. A row with an empty reply is never offered, so it is never
        marked learned without a step."""
        return self._query(
            f"SELECT {COLUMNS} FROM interactions WHERE learned_at IS NULL "
            "AND (response != '' OR coalesce(feedback_correction, '') != '') ORDER BY id LIMIT ?", (int(limit),)
        )

    def replay_candidates(self, *, fresh: bool = False) -> Candidates:
        """The learned rows' replay metadata as columns (no text), for replay policies.

        Kept up to date incrementally: each call reads only the rows whose
        ``changed_seq`` is above the last one seen, and drops the ids of forget
        requests recorded since (both in one read transaction, so writes by other
        threads or processes are picked up too). ``fresh=True`` reads everything
        again (the reference the cache is tested against). Treat the result as
        read-only; later calls return new objects.
        """
        cols = "id, created_at, loss, replay_count, strength, coalesce(last_rehearsed_at, learned_at, created_at)"
        if fresh:
            rows = self._store.fetch(f"SELECT {cols} FROM interactions WHERE learned_at IS NOT NULL ORDER BY id")
            return Candidates.from_matrix(np.array(rows, dtype=np.float64).reshape(len(rows), 6))
        with self._candidates_lock, self._store.reading() as db:
            cached, seq, audit_id = self._candidates
            conn = db.conn

            def read() -> tuple[int, list[Any], list[Any]]:
                conn.execute("BEGIN")  # one snapshot for the three reads
                try:
                    now_seq = conn.execute("SELECT seq FROM change_counter").fetchone()[0]
                    forgets = conn.execute(
                        "SELECT id, deleted_ids FROM forget_audit WHERE id > ? ORDER BY id", (audit_id,)
                    ).fetchall()
                    rows = conn.execute(
                        f"SELECT {cols} FROM interactions WHERE changed_seq > ? AND learned_at IS NOT NULL",
                        (seq,),
                    ).fetchall()
                    relearn = conn.execute(  # learned rows made new again (a new correction)
                        "SELECT id FROM interactions WHERE changed_seq > ? AND learned_at IS NULL", (seq,)
                    ).fetchall()
                finally:
                    conn.execute("COMMIT")
                return now_seq, forgets, rows, [r[0] for r in relearn]

            now_seq, forgets, rows, relearn = self._store.retry(read)
            if rows or forgets or relearn or cached is None:
                drop = np.array(sorted({i for _, ids in forgets for i in json.loads(ids)} | set(relearn)), dtype=np.int64)
                changed = Candidates.from_matrix(np.array(rows, dtype=np.float64).reshape(len(rows), 6))
                cached = (cached or Candidates.from_matrix(np.empty((0, 6)))).updated(changed, drop)
            self._candidates = (cached, now_seq, forgets[-1][0] if forgets else audit_id)
            return cached
