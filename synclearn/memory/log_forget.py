"""The forgetting side of the InteractionLog: selecting rows, deleting them for real, the audit.

:class:`LogForgetting` is a part of :class:`~synclearn.memory.log.InteractionLog` (which
inherits it). A delete removes the rows with ``secure_delete`` on, merges the full-text index
and checkpoints and truncates the WAL, so the text is in no byte of the files afterwards; an
audit row records the selector, the time and the ids (never the text). A delete interrupted
after its commit is finished on the next open (:meth:`LogForgetting._finish_forgets`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from synclearn.memory import schema
from synclearn.memory.schema import LogInputError, as_id_list, fts_phrase
from synclearn.memory.store import file_contains


class LogForgetting:
    """Selection, deletion and the forget audit (see module docstring)."""

    def forget_audit(self) -> list[dict[str, Any]]:
        """The forget requests, oldest first (``deleted_ids`` decoded from JSON)."""
        rows = self._query("SELECT * FROM forget_audit ORDER BY id")
        for r in rows:
            r["deleted_ids"] = json.loads(r["deleted_ids"])
        return rows

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
            value: str | None = json.dumps(sorted(set(as_id_list(ids))))  # type: ignore[arg-type]
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
            params = (fts_phrase(match), match, match, match)  # type: ignore[arg-type]
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
