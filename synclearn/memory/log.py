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


from synclearn.memory import schema
from synclearn.memory.log_forget import LogForgetting
from synclearn.memory.log_learning import LogLearning
from synclearn.memory.schema import (
    COLUMNS,
    ROW_KEYS,
    LogBusyError,
    LogClosedError,
    LogError,
    LogInputError,
    LogNotFoundError,
    LogSchemaError,
    fts_phrase,
    as_id_list,
)
from synclearn.memory.store import SYNCHRONOUS, WalStore
from synclearn.memory.strength import (  # noqa: F401 (the strength model is re-exported here)
    INITIAL_STRENGTH_S,
    REHEARSAL_GAIN,
    Candidates,
    rehearsed_strength,
    retention,
)


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

class InteractionLog(LogLearning, LogForgetting):
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

        A correction that differs from the row's earlier one makes a learned row new again (not
        learned): the learner takes it in once more, with the correction, and rehearses it as
        it does any new turn. What the learner took before stays learned until then.

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
            if correction is not None:  # a new correction: the row is to be learned again
                conn.execute(
                    "UPDATE interactions SET learned_at = NULL, changed_seq = ? WHERE id = ? AND learned_at IS NOT NULL "
                    "AND coalesce(feedback_correction, '') != ?", (schema.next_seq(conn), int(id), correction))
            return conn.execute(
                "UPDATE interactions SET feedback_score = coalesce(?, feedback_score), "
                "feedback_correction = coalesce(?, feedback_correction), feedback_at = ? WHERE id = ?",
                (score, correction, now, int(id)),
            ).rowcount

        if self._write(txn) == 0:
            raise LogNotFoundError(f"no interaction with id {id}")

    # ------------------------------------------------------------------ reads

    def get(self, id: int) -> dict[str, Any] | None:
        """The row with this id, or ``None``."""
        rows = self._query(f"SELECT {COLUMNS} FROM interactions WHERE id = ?", (int(id),))
        return rows[0] if rows else None

    def get_many(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """The rows with these ids, in the order asked; missing ids are skipped."""
        id_list = as_id_list(ids)
        rows = self._query(
            f"SELECT {COLUMNS} FROM interactions WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(id_list),)
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
                f"SELECT {COLUMNS} FROM interactions WHERE id > ? ORDER BY id LIMIT ?", (last, int(batch_size))
            )
            yield from rows
            if len(rows) < batch_size:
                return
            last = rows[-1]["id"]

    __iter__ = iter_rows

    def by_session(self, session_id: str) -> list[dict[str, Any]]:
        """The session's rows in turn order."""
        return self._query(f"SELECT {COLUMNS} FROM interactions WHERE session_id = ? ORDER BY turn", (session_id,))

    def between(self, t0: float, t1: float) -> list[dict[str, Any]]:
        """Rows with ``t0 <= created_at < t1``, oldest first."""
        return self._query(
            f"SELECT {COLUMNS} FROM interactions WHERE created_at >= ? AND created_at < ? ORDER BY created_at, id",
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
        return self._query(f"SELECT {COLUMNS} FROM interactions WHERE {' AND '.join(where)} ORDER BY id", params)

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
        query = text if raw else fts_phrase(text)
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

