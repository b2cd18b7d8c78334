"""InteractionLog: every prompt/response a synclearn model served, in one SQLite file.

Contract:

* One file in WAL mode. One writer connection behind a lock (``append`` and every
  other write may be called from any thread); each reading thread gets its own
  connection. Lock waits are retried up to ``busy_timeout_s``; callers never see
  ``SQLITE_BUSY``, only ``LogBusyError`` if another process holds the file longer.
* ``append`` returns the new id only after the row is committed. With
  ``synchronous="NORMAL"`` a committed row survives the process being killed;
  ``"FULL"`` (or ``"EXTRA"``) also survives power loss, at the cost of an fsync
  per commit.
* Bad input raises ``LogInputError`` before any SQL runs; a failing write rolls
  back its whole transaction. No partial rows.
* ``delete`` really deletes: rows are removed with ``secure_delete`` on (freed
  bytes are zeroed), the full-text index is merged so no deleted term survives in
  it, and the WAL is checkpointed and truncated. Afterwards the text is in no byte
  of the ``.db``, ``-wal`` or ``-shm`` files. An audit row records the selector,
  the time and the deleted ids, never the text. If the process dies between the
  delete's commit and the truncation, the next open finishes the job. Rows leave
  the log only through ``delete`` (the audit and the replay-candidate cache rely on it).
* Rows are plain dicts with the keys in ``ROW_KEYS``. Times are Unix seconds.

Strength model (the stored ``strength`` column): the stability ``S`` of an
exponential forgetting curve, in seconds. A row's retention ``t`` seconds after
its last rehearsal (``last_rehearsed_at``, else ``learned_at``, else
``created_at``) is ``exp(-t / S)`` (``retention``). A new row starts at
``INITIAL_STRENGTH_S``; each replay replaces ``S`` by ``rehearsed_strength(S, t)``.
The memory manager can pass its own rule as ``InteractionLog(rehearse=...)``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from synclearn.memory import schema
from synclearn.memory.schema import (
    LogBusyError,
    LogClosedError,
    LogError,
    LogInputError,
    LogNotFoundError,
    LogSchemaError,
)
from synclearn.memory.store import SYNCHRONOUS, WalStore, file_contains
from synclearn.memory.strength import INITIAL_STRENGTH_S, REHEARSAL_GAIN, Candidates, rehearsed_strength, retention


__all__ = [
    "InteractionLog",
    "ROW_KEYS",
    "INITIAL_STRENGTH_S",
    "retention",
    "rehearsed_strength",
    "LogError",
    "LogInputError",
    "LogSchemaError",
    "LogBusyError",
    "LogNotFoundError",
    "LogClosedError",
]

ROW_KEYS = (
    "id", "session_id", "turn", "prompt", "response", "created_at", "tokens", "loss",
    "loss_at", "feedback_score", "feedback_correction", "feedback_at", "learned_at",
    "replay_count", "strength", "last_rehearsed_at",
)  # fmt: skip
_COLS = ", ".join(ROW_KEYS)

# --------------------------------------------------------------------------- helpers


def _phrase(text: str) -> str:
    """An FTS5 query matching ``text`` as one phrase (its words, consecutively)."""
    return '"' + text.replace('"', '""') + '"'


def _next_seq(conn: sqlite3.Connection) -> int:
    """Bumps the change counter inside the caller's transaction; returns the new value."""
    return conn.execute("UPDATE change_counter SET seq = seq + 1 RETURNING seq").fetchone()[0]


def _id_list(ids: Iterable[Any], name: str = "ids") -> list[int]:
    arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
    if arr.size == 0:
        return []
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise LogInputError(f"{name} must be a 1-D sequence of ints, got {arr.dtype} values of shape {arr.shape}")
    return [int(i) for i in arr]


class InteractionLog:
    """The append-only (until forgotten) log of a model's own use.

    Args:
        path: The SQLite file; created if missing. ``-wal`` and ``-shm`` live beside it.
        synchronous: ``"NORMAL"`` (survives a killed process), ``"FULL"`` or
            ``"EXTRA"`` (also survive power loss; slower).
        max_text_bytes: Largest prompt/response/correction accepted, in UTF-8 bytes.
        busy_timeout_s: How long to wait for a lock held by another process
            (or a reader blocking a checkpoint) before raising ``LogBusyError``.
        rehearse: ``(strength_s, elapsed_s) -> strength_s`` used by ``mark_replayed``.

    Raises:
        LogSchemaError: The file is not a log, or was written by a newer synclearn.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        max_text_bytes: int = 1 << 20,
        busy_timeout_s: float = 30.0,
        rehearse: Callable[[float, float], float] = rehearsed_strength,
    ) -> None:
        self.path = os.fspath(path)
        if self.path == ":memory:" or self.path.startswith("file:"):
            raise LogInputError(f"InteractionLog needs a plain file path, got {self.path!r}")
        sync = str(synchronous).upper()
        if sync not in SYNCHRONOUS:
            raise LogInputError(f"synchronous must be one of {SYNCHRONOUS}, got {synchronous!r}")
        if not isinstance(max_text_bytes, int) or max_text_bytes < 1:
            raise LogInputError(f"max_text_bytes must be a positive int, got {max_text_bytes!r}")
        if not busy_timeout_s > 0:
            raise LogInputError(f"busy_timeout_s must be > 0, got {busy_timeout_s!r}")
        self.synchronous, self.max_text_bytes, self.busy_timeout_s = sync, max_text_bytes, float(busy_timeout_s)
        self.rehearse = rehearse
        self._candidates_lock = threading.Lock()
        self._candidates: tuple[Candidates | None, int, int] = (None, 0, 0)  # cache, changed_seq, audit id
        self._store = WalStore(self.path, synchronous=sync, busy_timeout_s=self.busy_timeout_s)
        try:
            self._finish_forgets()  # a delete interrupted before its WAL truncation
        except BaseException:
            self._store.close()
            raise

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return self._store.write(fn)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self._store.query(sql, params)

    def close(self) -> None:
        """Closes every connection. Call it once no other thread is using the log."""
        self._store.close()

    def __enter__(self) -> InteractionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def append(self, session_id: str, prompt: str, response: str, **meta: Any) -> int:
        """Logs one interaction; returns its id once the row is committed.

        Args:
            session_id: The conversation this turn belongs to (1-256 characters).
            prompt: What the user said. ``str``, valid UTF-8, no NUL, <= max_text_bytes.
            response: What the model answered; same rules.
            **meta: Optional ``turn`` (default: next turn of the session), ``tokens``,
                ``loss``, ``created_at`` (default: now), ``feedback_score``,
                ``feedback_correction``.

        Raises:
            LogInputError: Bad or unknown field, or the session already has that turn.
        """
        row = schema.validate_append(session_id, prompt, response, meta, self.max_text_bytes)
        return self._write(lambda conn: self._insert(conn, row, time.time()))

    def append_many(self, rows: Iterable[Mapping[str, Any]]) -> list[int]:
        """Appends several interactions in one transaction (all or none); returns their ids."""
        clean = []
        for i, r in enumerate(rows):
            r = dict(r)
            try:
                clean.append(
                    schema.validate_append(
                        r.pop("session_id", None), r.pop("prompt", None), r.pop("response", None), r,
                        self.max_text_bytes,
                    )
                )
            except LogInputError as e:
                raise LogInputError(f"row {i}: {e}") from None
        now = time.time()
        return self._write(lambda conn: [self._insert(conn, r, now) for r in clean])

    @staticmethod
    def _insert(conn: sqlite3.Connection, row: dict[str, Any], now: float) -> int:
        sid = row["session_id"]
        created = row.get("created_at")
        created = now if created is None else created
        conn.execute(
            "INSERT INTO sessions (id, created_at, last_active_at) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET last_active_at = max(last_active_at, excluded.last_active_at)",
            (sid, created, created),
        )
        turn = row.get("turn")
        if turn is None:
            turn = conn.execute("SELECT next_turn FROM sessions WHERE id = ?", (sid,)).fetchone()[0]
        conn.execute("UPDATE sessions SET next_turn = max(next_turn, ?) WHERE id = ?", (turn + 1, sid))
        has_feedback = row.get("feedback_score") is not None or row.get("feedback_correction") is not None
        try:
            cur = conn.execute(
                "INSERT INTO interactions (session_id, turn, prompt, response, created_at, tokens, loss, "
                "loss_at, feedback_score, feedback_correction, feedback_at, strength) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sid, turn, row["prompt"], row["response"], created, row.get("tokens"), row.get("loss"),
                    created if row.get("loss") is not None else None, row.get("feedback_score"),
                    row.get("feedback_correction"), created if has_feedback else None, INITIAL_STRENGTH_S,
                ),
            )  # fmt: skip
        except sqlite3.IntegrityError as e:
            raise LogInputError(f"session {sid!r} already has turn {turn} ({e})") from None
        return int(cur.lastrowid)

    def set_feedback(
        self, id: int, score: float | None = None, correction: str | None = None, now: float | None = None
    ) -> None:
        """Adds the user's feedback to a logged row (fields left ``None`` stay as they are).

        Raises:
            LogInputError: Neither score nor correction given, or a bad value.
            LogNotFoundError: No row with this id.
        """
        if score is None and correction is None:
            raise LogInputError("set_feedback needs a score, a correction, or both")
        score = None if score is None else schema.check_number("score", score, "real")
        if correction is not None:
            schema.check_text("correction", correction, self.max_text_bytes)
        now = time.time() if now is None else now

        def txn(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE interactions SET feedback_score = coalesce(?, feedback_score), "
                "feedback_correction = coalesce(?, feedback_correction), feedback_at = ? WHERE id = ?",
                (score, correction, now, int(id)),
            ).rowcount

        if self._write(txn) == 0:
            raise LogNotFoundError(f"no interaction with id {id}")

    def record_loss(self, ids: Sequence[int], losses: Sequence[float] | np.ndarray, now: float | None = None) -> int:
        """Stores the training loss measured on each row; returns how many rows exist to update."""
        id_list = _id_list(ids)
        values = np.asarray(losses, dtype=np.float64).reshape(-1)
        if values.shape != (len(id_list),):
            raise LogInputError(f"record_loss got {len(id_list)} ids but {values.size} losses")
        if not np.isfinite(values).all():
            raise LogInputError(f"losses must be finite, got {values[~np.isfinite(values)][:5].tolist()}")
        now = time.time() if now is None else now

        def txn(conn: sqlite3.Connection) -> int:
            seq = _next_seq(conn)
            params = [(float(v), now, seq, i) for i, v in zip(id_list, values)]
            sql = "UPDATE interactions SET loss = ?, loss_at = ?, changed_seq = ? WHERE id = ?"
            return conn.executemany(sql, params).rowcount

        return self._write(txn)

    def mark_learned(self, ids: Sequence[int], now: float | None = None) -> int:
        """Records that ``Learner.step`` trained on these rows (a first rehearsal); returns rows updated."""
        id_list = _id_list(ids)
        now = time.time() if now is None else now
        return self._write(
            lambda conn: conn.execute(
                "UPDATE interactions SET learned_at = coalesce(learned_at, ?1), last_rehearsed_at = ?2, "
                "changed_seq = ?3, learned_seq = coalesce(learned_seq, ?3) WHERE id IN (SELECT value FROM json_each(?4))",
                (now, now, _next_seq(conn), json.dumps(id_list)),
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
        return self._write(
            lambda conn: conn.execute(
                "UPDATE interactions SET learned_at = NULL, last_rehearsed_at = NULL, learned_seq = NULL, "
                "changed_seq = ?1 WHERE learned_seq > ?2",
                (_next_seq(conn), int(seq)),
            ).rowcount
        )

    def unlearn_since(self, t: float) -> int:
        """Mark rows learned after time ``t`` as not learned; returns how many. Prefer
        :meth:`unlearn_after` (wall clocks can jump); this is for checkpoints that recorded no
        change counter."""
        return self._write(
            lambda conn: conn.execute(
                "UPDATE interactions SET learned_at = NULL, last_rehearsed_at = NULL, learned_seq = NULL, "
                "changed_seq = ? WHERE learned_at > ?",
                (_next_seq(conn), float(t)),
            ).rowcount
        )

    def mark_replayed(self, ids: Sequence[int], now: float | None = None) -> int:
        """Counts one replay of each row and updates its strength; returns rows updated.

        Duplicate ids count once. Ids that no longer exist (forgotten) are skipped.
        """
        id_list = sorted(set(_id_list(ids)))
        now = time.time() if now is None else now

        def txn(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "SELECT id, strength, coalesce(last_rehearsed_at, learned_at, created_at) FROM interactions "
                "WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(id_list),),
            ).fetchall()
            seq = _next_seq(conn)
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

    # ------------------------------------------------------------------ reads

    def get(self, id: int) -> dict[str, Any] | None:
        """The row with this id, or ``None``."""
        rows = self._query(f"SELECT {_COLS} FROM interactions WHERE id = ?", (int(id),))
        return rows[0] if rows else None

    def get_many(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """The rows with these ids, in the order asked; missing ids are skipped."""
        id_list = _id_list(ids)
        rows = self._query(
            f"SELECT {_COLS} FROM interactions WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(id_list),)
        )
        by_id = {r["id"]: r for r in rows}
        return [by_id[i] for i in id_list if i in by_id]

    def count(self) -> int:
        """Number of rows."""
        return self._query("SELECT count(*) AS n FROM interactions")[0]["n"]

    def ids(self, *, learned: bool | None = None) -> list[int]:
        """All ids in order; ``learned=True/False`` keeps only (not yet) learned rows."""
        where = {None: "", True: " WHERE learned_at IS NOT NULL", False: " WHERE learned_at IS NULL"}[learned]
        return [r["id"] for r in self._query(f"SELECT id FROM interactions{where} ORDER BY id")]

    def iter_rows(self, batch_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every row in id order, read in short transactions (never blocks a checkpoint)."""
        last = 0
        while True:
            rows = self._query(
                f"SELECT {_COLS} FROM interactions WHERE id > ? ORDER BY id LIMIT ?", (last, int(batch_size))
            )
            yield from rows
            if len(rows) < batch_size:
                return
            last = rows[-1]["id"]

    __iter__ = iter_rows

    def by_session(self, session_id: str) -> list[dict[str, Any]]:
        """The session's rows in turn order."""
        return self._query(f"SELECT {_COLS} FROM interactions WHERE session_id = ? ORDER BY turn", (session_id,))

    def between(self, t0: float, t1: float) -> list[dict[str, Any]]:
        """Rows with ``t0 <= created_at < t1``, oldest first."""
        return self._query(
            f"SELECT {_COLS} FROM interactions WHERE created_at >= ? AND created_at < ? ORDER BY created_at, id",
            (float(t0), float(t1)),
        )

    def with_feedback(
        self, *, min_score: float | None = None, max_score: float | None = None, corrected: bool | None = None
    ) -> list[dict[str, Any]]:
        """Rows that received feedback, optionally filtered by score range / having a correction."""
        where = ["(feedback_score IS NOT NULL OR feedback_correction IS NOT NULL)"]
        params: list[Any] = []
        if min_score is not None:
            where.append("feedback_score >= ?")
            params.append(float(min_score))
        if max_score is not None:
            where.append("feedback_score <= ?")
            params.append(float(max_score))
        if corrected is not None:
            where.append("feedback_correction IS " + ("NOT NULL" if corrected else "NULL"))
        return self._query(f"SELECT {_COLS} FROM interactions WHERE {' AND '.join(where)} ORDER BY id", params)

    def search(self, text: str, *, limit: int | None = None, raw: bool = False) -> list[dict[str, Any]]:
        """Full-text search over prompt, response and correction, best match first.

        Args:
            text: Plain text, matched as a phrase (case- and accent-insensitive
                words, in order). With ``raw=True``, an FTS5 query expression.
            limit: At most this many rows.
        """
        schema.check_text("search text", text, self.max_text_bytes)
        if not text.strip():
            raise LogInputError("search text is empty")
        query = text if raw else _phrase(text)
        sql = (
            f"SELECT {', '.join('i.' + c for c in ROW_KEYS)} FROM interactions_fts f "
            "JOIN interactions i ON i.id = f.rowid WHERE interactions_fts MATCH ? ORDER BY f.rank, i.id"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        try:
            return self._query(sql, (query,))
        except sqlite3.OperationalError as e:
            raise LogInputError(f"bad full-text query {text!r}: {e}") from None

    def sessions(self) -> list[dict[str, Any]]:
        """Every session: id, created_at, last_active_at, next_turn, interactions."""
        return self._query(
            "SELECT s.id, s.created_at, s.last_active_at, s.next_turn, "
            "(SELECT count(*) FROM interactions i WHERE i.session_id = s.id) AS interactions "
            "FROM sessions s ORDER BY s.created_at, s.id"
        )

    def unlearned(self, limit: int) -> list[dict[str, Any]]:
        """The oldest rows not yet marked learned that have something to learn (a reply or a
        correction), oldest first. A row with an empty reply is never offered, so it is never
        marked learned without a step."""
        return self._query(
            f"SELECT {_COLS} FROM interactions WHERE learned_at IS NULL "
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
                finally:
                    conn.execute("COMMIT")
                return now_seq, forgets, rows

            now_seq, forgets, rows = self._store.retry(read)
            if rows or forgets or cached is None:
                drop = np.array([i for _, ids in forgets for i in json.loads(ids)], dtype=np.int64)
                changed = Candidates.from_matrix(np.array(rows, dtype=np.float64).reshape(len(rows), 6))
                cached = (cached or Candidates.from_matrix(np.empty((0, 6)))).updated(changed, drop)
            self._candidates = (cached, now_seq, forgets[-1][0] if forgets else audit_id)
            return cached

    def forget_audit(self) -> list[dict[str, Any]]:
        """The forget requests, oldest first (``deleted_ids`` decoded from JSON)."""
        rows = self._query("SELECT * FROM forget_audit ORDER BY id")
        for r in rows:
            r["deleted_ids"] = json.loads(r["deleted_ids"])
        return rows

    @property
    def schema_version(self) -> int:
        return self._query("PRAGMA user_version")[0]["user_version"]

    def integrity_check(self) -> str:
        """``"ok"``, or SQLite's description of the damage (also checks the FTS index)."""
        result = "\n".join(r["integrity_check"] for r in self._query("PRAGMA integrity_check"))
        try:
            self._write(lambda c: c.execute("INSERT INTO interactions_fts(interactions_fts) VALUES ('integrity-check')"))
        except sqlite3.DatabaseError as e:
            result += f"\nfull-text index: {e}"
        return result

    # ------------------------------------------------------------------ forgetting

    def _selector(
        self, ids: Sequence[int] | None, session_id: str | None, match: str | None
    ) -> tuple[str, str | None, str, tuple[Any, ...]]:
        """(selector name, audit value, SQL finding the ids, its params) for exactly one selector."""
        given = [n for n, v in (("ids", ids), ("session", session_id), ("match", match)) if v is not None]
        if len(given) != 1:
            raise LogInputError(f"give exactly one of ids, session_id, match; got {given or 'none'}")
        selector = given[0]
        if selector == "ids":
            value: str | None = json.dumps(sorted(set(_id_list(ids))))  # type: ignore[arg-type]
            find, params = "SELECT id FROM interactions WHERE id IN (SELECT value FROM json_each(?))", (value,)
        elif selector == "session":
            value = schema.check_session_id(session_id)
            find, params = "SELECT id FROM interactions WHERE session_id = ?", (value,)
        else:
            schema.check_text("match", match, self.max_text_bytes)
            if not match.strip():  # type: ignore[union-attr]
                raise LogInputError("match text is empty")
            value = None  # the text asked to forget is never stored
            find = (
                "SELECT rowid FROM interactions_fts WHERE interactions_fts MATCH ? UNION "
                "SELECT id FROM interactions WHERE instr(prompt, ?) OR instr(response, ?) "
                "OR instr(coalesce(feedback_correction, ''), ?)"
            )
            params = (_phrase(match), match, match, match)  # type: ignore[arg-type]
        return selector, value, find, params

    def select_ids(
        self, ids: Sequence[int] | None = None, *, session_id: str | None = None, match: str | None = None
    ) -> list[int]:
        """The ids ``delete`` would remove for the same selector (existing rows only), sorted."""
        _, _, find, params = self._selector(ids, session_id, match)
        return sorted(r[0] for r in self._store.fetch(find, params))

    def delete(
        self,
        ids: Sequence[int] | None = None,
        *,
        session_id: str | None = None,
        match: str | None = None,
        reason: str = "",
    ) -> list[int]:
        """Deletes rows for real and records the request; returns the deleted ids.

        Exactly one selector: ``ids``; ``session_id`` (its rows and the session);
        or ``match``: rows whose prompt, response or correction contains the text,
        either as a phrase (case- and accent-insensitive, via the FTS index) or as
        an exact substring. ``reason`` is stored in the audit; do not put the
        forgotten text in it.

        Raises:
            LogInputError: Not exactly one selector, or a bad value.
            LogBusyError: The rows are deleted but a reader kept the WAL from being
                truncated; the next ``delete`` or open finishes it.
        """
        selector, value, find, params = self._selector(ids, session_id, match)
        schema.check_text("reason", reason, 4096)
        requested_at = time.time()

        def txn(conn: sqlite3.Connection) -> list[int]:
            doomed = sorted(r[0] for r in conn.execute(find, params))
            doomed_json = json.dumps(doomed)
            sessions = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT session_id FROM interactions WHERE id IN (SELECT value FROM json_each(?))",
                    (doomed_json,),
                )
            ]
            if selector == "session":
                sessions.append(value)
            conn.execute("DELETE FROM interactions WHERE id IN (SELECT value FROM json_each(?))", (doomed_json,))
            conn.execute(
                "DELETE FROM sessions WHERE id IN (SELECT value FROM json_each(?)) "
                "AND NOT EXISTS (SELECT 1 FROM interactions i WHERE i.session_id = sessions.id)",
                (json.dumps(sessions),),
            )
            if doomed:
                # A delete leaves tombstones next to the old terms; merging every
                # segment into one drops both (FTS5 secure-delete needs SQLite 3.42).
                conn.execute("INSERT INTO interactions_fts(interactions_fts) VALUES ('optimize')")
            conn.execute(
                "INSERT INTO forget_audit (requested_at, selector, selector_value, reason, deleted_count, "
                "deleted_ids) VALUES (?, ?, ?, ?, ?, ?)",
                (requested_at, selector, value, reason, len(doomed), doomed_json),
            )
            return doomed

        lock, _ = self._store.locked_writer()
        with lock:  # no other write between this delete and its WAL truncation
            deleted = self._write(txn)
            self._finish_forgets()
        return deleted

    def _finish_forgets(self) -> None:
        """Truncates the WAL (old page images) and marks pending forget requests complete."""
        lock, conn = self._store.locked_writer()
        with lock:
            if conn.execute("SELECT 1 FROM forget_audit WHERE completed_at IS NULL LIMIT 1").fetchall():
                self._store.checkpoint_truncate()
                self._write(
                    lambda c: c.execute("UPDATE forget_audit SET completed_at = ? WHERE completed_at IS NULL", (time.time(),))
                )

    def files_containing(self, needle: str | bytes) -> list[str]:
        """Which of the ``.db``, ``-wal``, ``-shm`` files hold these bytes (UTF-8 for text)."""
        data = needle.encode("utf-8") if isinstance(needle, str) else bytes(needle)
        return [p for p in self._store.files() if file_contains(p, data)]
