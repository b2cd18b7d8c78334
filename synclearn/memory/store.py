"""WalStore: the SQLite plumbing under the interaction log.

Contract:

* One file in WAL mode, ``secure_delete`` on, temp data in memory (no temp files
  that could hold text).
* One writer connection behind a re-entrant lock: ``write(fn)`` runs ``fn(conn)``
  in a single ``BEGIN IMMEDIATE`` transaction and commits, or rolls back and
  re-raises. Callable from any thread.
* Each reading thread gets its own ``query_only`` connection (wrapped in a
  ``sqlite_utils.Database``), opened on first use and kept until ``close()``
  (so use a bounded pool of threads, as servers do). Results
  are fetched completely, so no read transaction outlives a call (an open one
  would block the WAL truncation a delete needs).
* Lock waits (``SQLITE_BUSY``) are retried for up to ``busy_timeout_s``; then
  ``LogBusyError``. Callers never see a raw ``SQLITE_BUSY``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlite_utils

from synclearn.memory import schema
from synclearn.memory.schema import LogBusyError, LogClosedError, LogError, LogSchemaError

SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")


def _is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


class WalStore:
    """A WAL-mode SQLite file with one writer and per-thread readers.

    Args:
        path: The database file.
        synchronous: ``"NORMAL"``, ``"FULL"`` or ``"EXTRA"`` (see InteractionLog).
        busy_timeout_s: How long lock waits are retried.

    Raises:
        LogSchemaError: The file is not a log or is from a newer version (unchanged).
    """

    def __init__(self, path: str, *, synchronous: str, busy_timeout_s: float) -> None:
        self.path, self.busy_timeout_s = path, busy_timeout_s
        self._closed = False
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.RLock()
        self._reads_done = threading.Condition(self._readers_lock)
        self._active_reads = 0  # reads in progress on any thread; close() waits for them

        schema.check_header(path)  # refuse newer / foreign files before SQLite touches them
        conn = self._connect()
        try:
            schema.check_openable(conn, path)
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise LogError(f"could not put {path} in WAL mode")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA secure_delete = ON")
            conn.execute("PRAGMA foreign_keys = ON")
            try:
                self.retry(lambda: schema.migrate(conn))
            except sqlite3.DatabaseError as e:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                raise LogSchemaError(
                    f"migrating {path} from schema version {version} to {schema.SCHEMA_VERSION} failed "
                    f"({e}); it was rolled back and the file left at version {version}"
                ) from e
        except BaseException:
            conn.close()
            raise
        self._writer = conn

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_s)
            conn.execute("PRAGMA temp_store = MEMORY")
        except sqlite3.Error as e:
            raise LogError(f"cannot open {self.path}: {e}") from e
        return conn

    def check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"InteractionLog({self.path!r}) is closed")

    def reader(self) -> sqlite_utils.Database:
        """This thread's read-only connection (created on first use)."""
        self.check_open()
        db = getattr(self._local, "db", None)
        if db is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = 1")
            with self._readers_lock:
                self.check_open()
                self._readers.append(conn)
            db = self._local.db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
        return db

    def retry(self, fn: Callable[[], Any]) -> Any:
        """Runs ``fn``, retrying while SQLite reports a lock, up to ``busy_timeout_s``."""
        deadline, pause = time.monotonic() + self.busy_timeout_s, 0.001
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if not _is_busy(e):
                    raise
                if time.monotonic() >= deadline:
                    raise LogBusyError(f"{self.path} stayed locked for {self.busy_timeout_s}s: {e}") from e
            time.sleep(pause)  # back off before the next attempt
            pause = min(pause * 2, 0.05)

    def write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Runs ``fn(conn)`` in one IMMEDIATE transaction on the writer; returns its result."""

        def attempt() -> Any:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        with self._write_lock:
            self.check_open()
            return self.retry(attempt)

    def locked_writer(self) -> tuple[threading.RLock, sqlite3.Connection]:
        """The write lock and writer connection, for statements that must run outside a transaction."""
        self.check_open()
        return self._write_lock, self._writer

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite_utils.Database]:
        """This thread's read connection, registered as in use: ``close()`` from another
        thread waits for the read to finish instead of closing the connection under it."""
        with self._reads_done:
            self.check_open()
            self._active_reads += 1
        try:
            yield self.reader()
        finally:
            with self._reads_done:
                self._active_reads -= 1
                self._reads_done.notify_all()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, read on this thread's connection."""
        with self.reading() as db:
            return self.retry(lambda: list(db.query(sql, params)))

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows as tuples (faster than ``query`` for bulk reads)."""
        with self.reading() as db:
            return self.retry(lambda: db.conn.execute(sql, params).fetchall())

    def checkpoint_truncate(self) -> None:
        """Copies the WAL into the database and truncates it to zero bytes.

        Waits (up to ``busy_timeout_s``) for readers still using old WAL frames.
        """
        with self._write_lock:
            self.check_open()

            def checkpoint() -> None:
                busy, _, _ = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy:  # a reader holds an old snapshot: let retry() wait for it
                    raise sqlite3.OperationalError("database is locked (checkpoint blocked by a reader)")

            self.retry(checkpoint)

    def files(self) -> list[str]:
        """The database file and its ``-wal`` and ``-shm`` companions."""
        return [self.path, self.path + "-wal", self.path + "-shm"]

    def close(self) -> None:
        """Closes every connection; the last close checkpoints and removes the WAL."""
        with self._write_lock:
            if self._closed:
                return
            with self._reads_done:
                self._closed = True  # no new reads start from here
                if not self._reads_done.wait_for(lambda: self._active_reads == 0, self.busy_timeout_s):
                    raise LogBusyError(f"{self.path}: reads still running after {self.busy_timeout_s}s; not closed")
                readers, self._readers = self._readers, []
            for conn in readers:
                conn.close()
            self._writer.close()


def file_contains(path: str | os.PathLike[str], needle: bytes, chunk: int = 1 << 22) -> bool:
    """Whether ``needle`` occurs anywhere in the file (False if it does not exist)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return False
    with f:
        tail = b""
        while block := f.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-(len(needle) - 1) :] if len(needle) > 1 else b""
    return False
