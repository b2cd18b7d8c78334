"""On-disk format of the interaction log: tables, versions, migrations, input rules.

Contract:

* The schema version lives in the file header (``PRAGMA user_version``) and the
  file is tagged with ``PRAGMA application_id = APPLICATION_ID``.
  ``MIGRATIONS[v]`` turns a version ``v`` file into version ``v + 1``; all pending
  steps and the version bump run in ONE transaction, so a crash mid-migration
  leaves the file at its old version.
* ``check_openable`` only reads. A file written by a newer synclearn, a SQLite
  file that is not a synclearn log, or a file that is not SQLite at all raises
  ``LogSchemaError`` before anything is written to it.
* ``validate_append`` checks one ``append`` call completely before any SQL runs,
  so bad input never leaves a partial row.

Tables (version 3):

* ``sessions(id, created_at, last_active_at, next_turn)``
* ``interactions(id, session_id, turn, prompt, response, created_at, tokens, loss,
  loss_at, feedback_score, feedback_correction, feedback_at, learned_at,
  replay_count, strength, last_rehearsed_at, changed_seq, learned_seq)``; ids come from
  AUTOINCREMENT and are never reused, even after a delete (the step journal
  refers to them).
* ``change_counter(seq)``: bumped by every write that changes replay metadata
  (learned, loss, replay count, strength); the rows it touched get
  ``changed_seq = seq``, so a reader can fetch only what changed since it last looked;
  ``learned_seq`` is the counter at which a row was first marked learned (version 3), so a
  restored checkpoint can unlearn exactly the rows learned after it, whatever the clock did.
* ``forget_audit(id, requested_at, completed_at, selector, selector_value,
  reason, deleted_count, deleted_ids)``: what was asked and when; never the text.
* ``interactions_fts``: FTS5 over prompt, response and correction, external
  content (the text is stored once, in ``interactions``), kept in step by triggers.
"""

from __future__ import annotations

import math
import numbers
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

APPLICATION_ID = 0x53594E43  # "SYNC"
SCHEMA_VERSION = 3
MAX_SESSION_ID_CHARS = 256


class LogError(Exception):
    """Base class of every error the interaction log raises on purpose."""


class LogInputError(LogError, ValueError):
    """A caller passed a value the log does not accept; nothing was written."""


class LogSchemaError(LogError):
    """The file cannot be opened as an interaction log; it was left unchanged."""


class LogBusyError(LogError, TimeoutError):
    """The database stayed locked by another process past ``busy_timeout_s``."""


class LogNotFoundError(LogError, LookupError):
    """No interaction with the requested id."""


class LogClosedError(LogError):
    """The log was used after ``close()``."""


# --------------------------------------------------------------------------- migrations

_V1_CORE = """
CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    created_at     REAL NOT NULL,
    last_active_at REAL NOT NULL,
    next_turn      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE interactions (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id          TEXT NOT NULL REFERENCES sessions(id),
    turn                INTEGER NOT NULL CHECK (turn >= 0),
    prompt              TEXT NOT NULL,
    response            TEXT NOT NULL,
    created_at          REAL NOT NULL,
    tokens              INTEGER CHECK (tokens >= 0),
    loss                REAL,
    loss_at             REAL,
    feedback_score      REAL,
    feedback_correction TEXT,
    feedback_at         REAL,
    learned_at          REAL,
    replay_count        INTEGER NOT NULL DEFAULT 0,
    strength            REAL NOT NULL CHECK (strength > 0),
    last_rehearsed_at   REAL,
    changed_seq         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (session_id, turn)
);
CREATE INDEX interactions_changed ON interactions(changed_seq);
CREATE TABLE change_counter (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
INSERT INTO change_counter VALUES (1, 0);
CREATE INDEX interactions_created_at ON interactions(created_at);
CREATE INDEX interactions_unlearned ON interactions(id) WHERE learned_at IS NULL;
CREATE INDEX interactions_feedback ON interactions(feedback_score)
    WHERE feedback_score IS NOT NULL OR feedback_correction IS NOT NULL;
CREATE TABLE forget_audit (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    requested_at   REAL NOT NULL,
    completed_at   REAL,
    selector       TEXT NOT NULL CHECK (selector IN ('ids', 'session', 'match')),
    selector_value TEXT,
    reason         TEXT NOT NULL DEFAULT '',
    deleted_count  INTEGER NOT NULL,
    deleted_ids    TEXT NOT NULL
);
"""

_V2_FTS = """
CREATE VIRTUAL TABLE interactions_fts USING fts5(
    prompt, response, feedback_correction,
    content='interactions', content_rowid='id',
    tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER interactions_fts_ai AFTER INSERT ON interactions BEGIN
    INSERT INTO interactions_fts(rowid, prompt, response, feedback_correction)
    VALUES (new.id, new.prompt, new.response, new.feedback_correction);
END;
CREATE TRIGGER interactions_fts_ad AFTER DELETE ON interactions BEGIN
    INSERT INTO interactions_fts(interactions_fts, rowid, prompt, response, feedback_correction)
    VALUES ('delete', old.id, old.prompt, old.response, old.feedback_correction);
END;
CREATE TRIGGER interactions_fts_au AFTER UPDATE OF prompt, response, feedback_correction
ON interactions BEGIN
    INSERT INTO interactions_fts(interactions_fts, rowid, prompt, response, feedback_correction)
    VALUES ('delete', old.id, old.prompt, old.response, old.feedback_correction);
    INSERT INTO interactions_fts(rowid, prompt, response, feedback_correction)
    VALUES (new.id, new.prompt, new.response, new.feedback_correction);
END;
INSERT INTO interactions_fts(interactions_fts) VALUES ('rebuild');
"""


def _run_script(sql: str) -> Callable[[sqlite3.Connection], None]:
    def step(conn: sqlite3.Connection) -> None:
        # executescript() would COMMIT first; run statement by statement instead so
        # the migration stays inside the caller's transaction.
        for statement in _split_sql(sql):
            conn.execute(statement)

    return step


def _split_sql(sql: str) -> list[str]:
    """Splits a script into complete statements (handles trigger bodies)."""
    statements, current = [], ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        raise AssertionError(f"incomplete SQL statement in migration: {current!r}")
    return statements


_V3_LEARNED_SEQ = """
ALTER TABLE interactions ADD COLUMN learned_seq INTEGER;
UPDATE interactions SET learned_seq = changed_seq WHERE learned_at IS NOT NULL;
"""


# MIGRATIONS[v] upgrades a version-v file to version v + 1.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    0: _run_script(_V1_CORE),  # empty file -> rows, sessions, forget audit
    1: _run_script(_V2_FTS),  # full-text index, built from the rows already there
    2: _run_script(_V3_LEARNED_SEQ),  # the change counter at which a row was first learned
}
assert sorted(MIGRATIONS) == list(range(SCHEMA_VERSION))


def check_openable(conn: sqlite3.Connection, path: str) -> int:
    """Reads the header and returns the file's schema version, or raises.

    Args:
        conn: A fresh connection to ``path``; only read statements are run on it.
        path: The file name, for error messages.

    Returns:
        The ``user_version`` of the file (0 for a new, empty file).

    Raises:
        LogSchemaError: Not SQLite, not a synclearn log, or written by a newer version.
    """
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.DatabaseError as e:
        raise LogSchemaError(f"{path} is not a readable SQLite database ({e}); it was left unchanged") from e
    if app_id not in (0, APPLICATION_ID):
        raise LogSchemaError(
            f"{path} is a SQLite file of another application (application_id={app_id:#x}, "
            f"a synclearn log has {APPLICATION_ID:#x}); it was left unchanged"
        )
    if version == 0 and tables:
        raise LogSchemaError(
            f"{path} is a SQLite database but not a synclearn interaction log "
            f"(it has tables {sorted(tables)} and user_version 0); it was left unchanged"
        )
    if version > SCHEMA_VERSION:
        raise LogSchemaError(
            f"{path} has schema version {version}, written by a newer synclearn; this "
            f"version reads schema versions up to {SCHEMA_VERSION}. Upgrade synclearn to "
            "open it; the file was left unchanged"
        )
    return version


def check_header(path: str) -> None:
    """Checks the 100-byte SQLite header of ``path`` before SQLite opens it for writing.

    A missing or empty file passes (it will become a new log). Raises
    ``LogSchemaError`` for a non-SQLite file, another application's file, or a
    newer schema version, without writing anything.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except FileNotFoundError:
        return
    if not head:
        return
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        raise LogSchemaError(f"{path} is not a SQLite database (bad header); it was left unchanged")
    version = int.from_bytes(head[60:64], "big", signed=True)
    app_id = int.from_bytes(head[68:72], "big", signed=True)
    if app_id not in (0, APPLICATION_ID) or version > SCHEMA_VERSION:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            check_openable(conn, path)  # raises the precise error
        finally:
            conn.close()


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Upgrades the file to ``target`` in one transaction; returns the old version.

    ``conn`` must be in autocommit mode (``isolation_level=None``) and outside a
    transaction. A failing step rolls everything back.
    """
    if not 0 <= target <= SCHEMA_VERSION:
        raise ValueError(f"target schema version {target} is not in [0, {SCHEMA_VERSION}]")
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # re-read under the lock
        for v in range(version, target):
            MIGRATIONS[v](conn)
        if version < target:
            conn.execute(f"PRAGMA user_version = {int(target)}")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return version


# --------------------------------------------------------------------------- input rules

# Optional fields of InteractionLog.append(**meta): name -> kind.
APPEND_FIELDS: dict[str, str] = {
    "turn": "count",
    "tokens": "count",
    "loss": "real",
    "created_at": "real",
    "feedback_score": "real",
    "feedback_correction": "text",
}


def check_text(name: str, value: Any, max_bytes: int) -> str:
    """Returns ``value`` if it is storable text, else raises ``LogInputError``.

    Storable: a ``str`` that encodes as UTF-8 (no lone surrogates), has no NUL
    character (SQLite's text functions and the FTS tokenizer stop at NUL), and is
    at most ``max_bytes`` bytes in UTF-8.
    """
    if not isinstance(value, str):
        hint = " (decode bytes as UTF-8 first)" if isinstance(value, (bytes, bytearray)) else ""
        raise LogInputError(f"{name} must be str, got {type(value).__name__}{hint}")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise LogInputError(
            f"{name} is not valid UTF-8 text: {e.reason} at character {e.start} "
            f"({value[e.start:e.end]!r}); pass well-formed Unicode text"
        ) from None
    if "\x00" in value:
        raise LogInputError(f"{name} contains a NUL character at position {value.index(chr(0))}; NUL is not accepted")
    if len(data) > max_bytes:
        raise LogInputError(f"{name} is {len(data)} bytes in UTF-8; the limit is max_text_bytes={max_bytes}")
    return value


def check_number(name: str, value: Any, kind: str) -> int | float:
    """Checks a ``count`` (int in [0, 2**63)) or ``real`` (finite float) field."""
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < 2**63:
            raise LogInputError(f"{name} must be an int >= 0 (and < 2**63), got {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise LogInputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_session_id(value: Any) -> str:
    """A session id is non-empty text of at most ``MAX_SESSION_ID_CHARS`` characters."""
    check_text("session_id", value, max_bytes=4 * MAX_SESSION_ID_CHARS)
    if not value or len(value) > MAX_SESSION_ID_CHARS:
        raise LogInputError(f"session_id must have 1 to {MAX_SESSION_ID_CHARS} characters, got {len(value)}")
    return value


def validate_append(
    session_id: Any, prompt: Any, response: Any, meta: Mapping[str, Any], max_text_bytes: int
) -> dict[str, Any]:
    """Checks one ``append`` call; returns the cleaned column values.

    Raises:
        LogInputError: naming every problem found, so one call reports them all.
    """
    problems, row = [], {}
    unknown = sorted(set(meta) - set(APPEND_FIELDS))
    if unknown:
        problems.append(
            f"unknown field(s) {unknown}; append accepts session_id, prompt, response and "
            f"optionally {sorted(APPEND_FIELDS)}"
        )
    checks: list[tuple[str, Callable[[], Any]]] = [
        ("session_id", lambda: check_session_id(session_id)),
        ("prompt", lambda: check_text("prompt", prompt, max_text_bytes)),
        ("response", lambda: check_text("response", response, max_text_bytes)),
    ]
    for name, value in meta.items():
        kind = APPEND_FIELDS.get(name)
        if kind is None:
            continue  # reported above
        if value is None:
            row[name] = None  # same as leaving the field out
        elif kind == "text":
            checks.append((name, lambda n=name, v=value: check_text(n, v, max_text_bytes)))
        else:
            checks.append((name, lambda n=name, v=value, k=kind: check_number(n, v, k)))
    for name, check in checks:
        try:
            row[name] = check()
        except LogInputError as e:
            problems.append(str(e))
    if problems:
        raise LogInputError("; ".join(problems))
    return row


# -- SQL helpers shared by the log's modules ------------------------------------------------------
ROW_KEYS = (
    "id", "session_id", "turn", "prompt", "response", "created_at", "tokens", "loss",
    "loss_at", "feedback_score", "feedback_correction", "feedback_at", "learned_at",
    "replay_count", "strength", "last_rehearsed_at",
)  # fmt: skip
COLUMNS = ", ".join(ROW_KEYS)  # the SELECT list of a row


def fts_phrase(text: str) -> str:
    """An FTS5 query matching ``text`` as one phrase (its words, consecutively)."""
    return '"' + text.replace('"', '""') + '"'


def next_seq(conn: sqlite3.Connection) -> int:
    """Bumps the change counter inside the caller's transaction; returns the new value."""
    return conn.execute("UPDATE change_counter SET seq = seq + 1 RETURNING seq").fetchone()[0]


def as_id_list(ids: Iterable[Any], name: str = "ids") -> list[int]:
    """``ids`` as a list of ints; LogInputError for anything but a 1-D sequence of ints."""
    arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
    if arr.size == 0:
        return []
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise LogInputError(f"{name} must be a 1-D sequence of ints, got {arr.dtype} values of shape {arr.shape}")
    return [int(i) for i in arr]
