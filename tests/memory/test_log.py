"""InteractionLog: rows, queries, feedback, strength, bad input, schema versions."""

import hashlib
import math
import sqlite3

import numpy as np
import pytest

from synclearn.memory import (
    INITIAL_STRENGTH_S,
    InteractionLog,
    LogClosedError,
    LogInputError,
    LogNotFoundError,
    LogSchemaError,
    rehearsed_strength,
    retention,
)
from synclearn.memory import schema

ROW_KEYS = {
    "id", "session_id", "turn", "prompt", "response", "created_at", "tokens", "loss", "feedback_score",
    "feedback_correction", "replay_count", "strength", "last_rehearsed_at",
}  # fmt: skip


@pytest.fixture
def log(tmp_path):
    with InteractionLog(tmp_path / "log.db", max_text_bytes=1000) as log:
        yield log


def test_append_returns_committed_row_with_every_field(log, tmp_path):
    rid = log.append(session_id="s1", prompt="2+2?", response="4", tokens=7, loss=0.25, created_at=100.0)
    row = log.get(rid)
    assert ROW_KEYS <= set(row)
    assert row["session_id"] == "s1" and row["turn"] == 0 and row["prompt"] == "2+2?" and row["response"] == "4"
    assert (row["tokens"], row["loss"], row["created_at"]) == (7, 0.25, 100.0)
    assert row["replay_count"] == 0 and row["strength"] == INITIAL_STRENGTH_S and row["last_rehearsed_at"] is None
    # Committed: a connection of its own sees it.
    other = sqlite3.connect(tmp_path / "log.db")
    assert other.execute("SELECT prompt FROM interactions WHERE id = ?", (rid,)).fetchone() == ("2+2?",)
    other.close()
    assert log.get(rid + 100) is None


def test_turns_sessions_and_time_queries(log):
    a = log.append(session_id="s1", prompt="a", response="1", created_at=10.0)
    b = log.append(session_id="s2", prompt="b", response="2", created_at=20.0)
    c = log.append(session_id="s1", prompt="c", response="3", created_at=30.0)
    d = log.append(session_id="s1", prompt="d", response="4", turn=7, created_at=40.0)
    e = log.append(session_id="s1", prompt="e", response="5", created_at=50.0)
    assert [r["turn"] for r in log.by_session("s1")] == [0, 1, 7, 8]
    assert [r["id"] for r in log.by_session("s1")] == [a, c, d, e]
    assert [r["id"] for r in log.between(20.0, 40.0)] == [b, c]  # [t0, t1)
    assert log.count() == 5 and log.ids() == [a, b, c, d, e]
    assert [r["id"] for r in log.iter_rows(batch_size=2)] == [a, b, c, d, e]
    sessions = {s["id"]: s for s in log.sessions()}
    assert sessions["s1"]["interactions"] == 4 and sessions["s1"]["next_turn"] == 9
    assert sessions["s1"]["created_at"] == 10.0 and sessions["s1"]["last_active_at"] == 50.0
    with pytest.raises(LogInputError, match="already has turn 7"):
        log.append(session_id="s1", prompt="x", response="y", turn=7)
    assert log.count() == 5


def test_feedback_loss_and_full_text_search(log):
    a = log.append(session_id="s", prompt="What is the capital of France?", response="Lyon")
    b = log.append(session_id="s", prompt="Best café in town?", response="Chez Marie", feedback_score=1.0)
    c = log.append(session_id="s", prompt="weather", response="sunny")
    log.set_feedback(a, score=-1.0, correction="Paris")
    log.set_feedback(a, score=-0.5)  # correction kept
    assert log.get(a)["feedback_correction"] == "Paris" and log.get(a)["feedback_score"] == -0.5
    assert [r["id"] for r in log.with_feedback()] == [a, b]
    assert [r["id"] for r in log.with_feedback(min_score=0)] == [b]
    assert [r["id"] for r in log.with_feedback(corrected=True)] == [a]
    assert [r["id"] for r in log.search("paris")] == [a]  # corrections are indexed too
    assert [r["id"] for r in log.search("CAFE")] == [b]  # case and accents folded
    assert [r["id"] for r in log.search("capital of france")] == [a]
    assert log.search("france capital") == []  # a phrase, in order
    assert [r["id"] for r in log.search("capital AND lyon", raw=True)] == [a]
    with pytest.raises(LogInputError, match="bad full-text query"):
        log.search('"unbalanced', raw=True)
    with pytest.raises(LogNotFoundError):
        log.set_feedback(999, score=1.0)
    with pytest.raises(LogInputError, match="needs a score"):
        log.set_feedback(a)
    assert log.record_loss([a, c, 999], np.array([0.5, 1.5, 2.0])) == 2
    assert log.get(c)["loss"] == 1.5
    with pytest.raises(LogInputError, match="finite"):
        log.record_loss([a], [math.nan])


def test_replay_marks_update_strength_by_the_documented_rule(log):
    a = log.append(session_id="s", prompt="p", response="r", created_at=0.0)
    assert log.mark_learned([a], now=1000.0) == 1
    assert log.get(a)["last_rehearsed_at"] == 1000.0
    assert log.ids(learned=True) == [a] and log.ids(learned=False) == []
    assert log.mark_replayed([a, a, 12345], now=1000.0 + 86_400.0) == 1
    row = log.get(a)
    expected = INITIAL_STRENGTH_S * (1 + 2.0 * (1 - math.exp(-1.0)))
    assert row["replay_count"] == 1 and row["last_rehearsed_at"] == 87_400.0
    assert row["strength"] == pytest.approx(expected) == rehearsed_strength(INITIAL_STRENGTH_S, 86_400.0)
    assert retention(INITIAL_STRENGTH_S, 0.0) == 1.0 and retention(10.0, 10.0) == pytest.approx(math.exp(-1))


def test_custom_rehearse_rule(tmp_path):
    with InteractionLog(tmp_path / "log.db", rehearse=lambda s, t: s + t) as log:
        a = log.append(session_id="s", prompt="p", response="r", created_at=0.0)
        log.mark_replayed([a], now=5.0)
        assert log.get(a)["strength"] == INITIAL_STRENGTH_S + 5.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=b"bytes", response="r"), "prompt must be str, got bytes"),
        (dict(prompt=None, response="r"), "prompt must be str, got NoneType"),
        (dict(prompt="p", response=42), "response must be str, got int"),
        (dict(prompt="bad \udc80 surrogate", response="r"), "prompt is not valid UTF-8"),
        (dict(prompt="nul\x00inside", response="r"), "NUL"),
        (dict(prompt="p", response="é" * 501), "1002 bytes in UTF-8; the limit is max_text_bytes=1000"),
        (dict(prompt="p", response="r", mood="happy"), r"unknown field\(s\) \['mood'\]"),
        (dict(prompt="p", response="r", tokens="7"), "tokens must be an int"),
        (dict(prompt="p", response="r", tokens=True), "tokens must be an int"),
        (dict(prompt="p", response="r", turn=-1), "turn must be an int >= 0"),
        (dict(prompt="p", response="r", loss=math.inf), "loss must be a finite number"),
        (dict(prompt="p", response="r", feedback_correction=b"x"), "feedback_correction must be str"),
        (dict(session_id="", prompt="p", response="r"), "session_id must have 1 to 256"),
        (dict(session_id=7, prompt="p", response="r"), "session_id must be str"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(log, tmp_path, kwargs, message):
    kwargs = {"session_id": "s", **kwargs}
    with pytest.raises(LogInputError, match=message):
        log.append(**kwargs)
    assert log.count() == 0 and log.sessions() == []


def test_one_error_reports_every_problem(log):
    with pytest.raises(LogInputError) as e:
        log.append(session_id="s", prompt=b"x", response="r", tokens=-3, colour="red")
    assert "prompt" in str(e.value) and "tokens" in str(e.value) and "colour" in str(e.value)


def test_append_many_is_all_or_nothing(log):
    rows = [dict(session_id="s", prompt=f"p{i}", response="r") for i in range(5)]
    assert log.append_many(rows) == [1, 2, 3, 4, 5]
    with pytest.raises(LogInputError, match="row 1: "):
        log.append_many([rows[0], dict(session_id="s", prompt=3, response="r")])
    with pytest.raises(LogInputError, match="already has turn 0"):  # fails inside the transaction
        log.append_many([dict(session_id="t", prompt="a", response="b"), dict(session_id="s", prompt="a",
                                                                              response="b", turn=0)])
    assert log.count() == 5 and [s["id"] for s in log.sessions()] == ["s"]


def test_closed_log_refuses_use(tmp_path):
    log = InteractionLog(tmp_path / "log.db")
    log.close()
    log.close()  # idempotent
    with pytest.raises(LogClosedError):
        log.append(session_id="s", prompt="p", response="r")
    with pytest.raises(LogClosedError):
        log.count()


def test_pragmas_and_options(tmp_path):
    path = tmp_path / "log.db"
    with InteractionLog(path, synchronous="full"):
        pass
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    assert conn.execute("PRAGMA application_id").fetchone()[0] == schema.APPLICATION_ID
    conn.close()
    with pytest.raises(LogInputError, match="synchronous must be one of"):
        InteractionLog(path, synchronous="OFF")
    with pytest.raises(LogInputError, match="plain file path"):
        InteractionLog(":memory:")


# --------------------------------------------------------------------------- schema versions


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_newer_schema_version_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "log.db"
    with InteractionLog(path) as log:
        log.append(session_id="s", prompt="p", response="r")
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    conn.close()
    before = _digest(path)
    with pytest.raises(LogSchemaError, match=f"schema version {schema.SCHEMA_VERSION + 1}.*newer synclearn"):
        InteractionLog(path)
    assert _digest(path) == before


@pytest.mark.parametrize("kind", ["foreign_tables", "foreign_app", "not_sqlite"])
def test_foreign_files_are_refused_and_left_unchanged(tmp_path, kind):
    path = tmp_path / "other.db"
    if kind == "not_sqlite":
        path.write_bytes(b"hello, I am a text file, not a database" * 10)
    else:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, data BLOB)")
        if kind == "foreign_app":
            conn.execute("PRAGMA application_id = 42")
        conn.commit()
        conn.close()
    before = _digest(path)
    with pytest.raises(LogSchemaError, match="left unchanged"):
        InteractionLog(path)
    assert _digest(path) == before


def test_migration_from_version_1_builds_the_full_text_index(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    assert schema.migrate(conn, target=1) == 0
    conn.execute("INSERT INTO sessions VALUES ('s', 1.0, 1.0, 1)")
    conn.execute(
        "INSERT INTO interactions (session_id, turn, prompt, response, created_at, strength) "
        "VALUES ('s', 0, 'the old penguin row', 'r', 1.0, 86400)"
    )
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()
    with InteractionLog(path) as log:
        assert log.schema_version == schema.SCHEMA_VERSION
        assert [r["prompt"] for r in log.search("penguin")] == ["the old penguin row"]
        assert log.integrity_check() == "ok"


def test_failed_migration_rolls_back_completely(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    schema.migrate(conn, target=1)
    conn.execute("CREATE TABLE interactions_fts (x)")  # collides with what migration 1 -> 2 creates
    before = [r[0] for r in conn.execute("SELECT name FROM sqlite_master ORDER BY name")]
    conn.close()
    with pytest.raises(LogSchemaError, match=f"from schema version 1 to {schema.SCHEMA_VERSION} failed.*already exists.*left at version 1"):
        InteractionLog(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master ORDER BY name")] == before
    conn.close()


def test_a_new_correction_makes_a_learned_row_new_again(tmp_path):
    log = InteractionLog(tmp_path / "log.db")
    a = log.append(session_id="s", prompt="What is Kado's pet?", response="It's a cat.")
    b = log.append(session_id="s", prompt="Hi!", response="Hello!")
    log.mark_learned([a, b])
    assert [r["id"] for r in log.unlearned(10)] == [] and sorted(log.replay_candidates().ids.tolist()) == [a, b]
    log.set_feedback(a, score=1.0)  # a score alone changes nothing about learning
    assert log.unlearned(10) == []
    log.set_feedback(a, correction="It's a parrot.")
    assert [r["id"] for r in log.unlearned(10)] == [a]
    assert log.replay_candidates().ids.tolist() == [b] == log.replay_candidates(fresh=True).ids.tolist()
    log.mark_learned([a])
    log.set_feedback(a, correction="It's a parrot.")  # the same correction again: nothing new to learn
    assert log.unlearned(10) == [] and sorted(log.replay_candidates().ids.tolist()) == [a, b]
    assert log.get(a)["feedback_correction"] == "It's a parrot."
