"""Deletion really deletes: a planted canary is in no byte of the .db, -wal, -shm files."""

import sqlite3

import pytest

from synclearn.memory import InteractionLog, LogInputError

# Canaries start with letters no filler word starts with, so the full-text index
# cannot store them prefix-compressed against a neighbour term; the byte checks
# also look for the tail, which catches a prefix-compressed copy anyway.
CANARY = "qxcanary7781zeta"
FILLER = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]


def _filler(i: int, words: int = 40) -> str:
    return " ".join(FILLER[(i * 7 + j) % len(FILLER)] + str(j % 13) for j in range(words))


def _needles(text: str) -> list[bytes]:
    return [text.encode(), text[3:].encode()]


def _assert_absent(path, text: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        p = str(path) + suffix
        try:
            data = open(p, "rb").read()
        except FileNotFoundError:
            continue
        for needle in _needles(text):
            assert needle not in data, f"{needle!r} still in {p}"


def _plant(log: InteractionLog, n: int = 300) -> list[int]:
    """n filler rows; every 50th carries the canary in prompt, response or correction."""
    planted = []
    for i in range(n):
        prompt, response = _filler(i), _filler(i + 1)
        if i % 50 == 7:
            prompt = f"{prompt} {CANARY} {prompt}"
        elif i % 50 == 23:
            response = f"my secret is {CANARY}, keep it"
        rid = log.append(session_id=f"s{i % 5}", prompt=prompt, response=response)
        if i % 50 in (7, 23):
            planted.append(rid)
        if i % 50 == 31:
            log.set_feedback(rid, correction=f"it is {CANARY.upper()} actually")
            planted.append(rid)
    return planted


def test_delete_by_match_leaves_no_byte_of_the_canary(tmp_path):
    path = tmp_path / "log.db"
    with InteractionLog(path) as log:
        planted = _plant(log)
    # Reopen: the first close checkpointed, so the canary now sits in the .db file
    # itself; more rows go to the WAL.
    with InteractionLog(path) as log:
        planted += _plant(log, 100)
        assert log.files_containing(CANARY), "positive control: the canary must be on disk before the delete"
        before = log.count()

        deleted = log.delete(match=CANARY.upper(), reason="user request #12")

        assert sorted(deleted) == sorted(planted)
        assert log.count() == before - len(planted)
        assert log.search(CANARY) == []
        assert log.files_containing(CANARY) == [] and log.files_containing(CANARY.lower()) == []
        _assert_absent(path, CANARY)
        _assert_absent(path, CANARY.upper())
        assert log.integrity_check() == "ok"
        audit = log.forget_audit()
        assert len(audit) == 1 and audit[0]["selector"] == "match" and audit[0]["selector_value"] is None
        assert audit[0]["deleted_ids"] == sorted(planted) and audit[0]["completed_at"] is not None
        assert CANARY.lower() not in str(audit).lower()
        assert log.search("alpha0") != []  # the rest of the index still works
    _assert_absent(path, CANARY)


@pytest.mark.parametrize("selector", ["ids", "session"])
def test_delete_by_ids_and_session(tmp_path, selector):
    path = tmp_path / "log.db"
    with InteractionLog(path) as log:
        keep = [log.append(session_id="keep", prompt=_filler(i), response="fine") for i in range(50)]
        secret = [
            log.append(session_id="doomed", prompt=f"{CANARY} {i}", response=_filler(i)) for i in range(20)
        ]
        log.close()
    with InteractionLog(path) as log:
        if selector == "ids":
            deleted = log.delete(ids=secret, reason="gdpr")
        else:
            deleted = log.delete(session_id="doomed", reason="gdpr")
        assert deleted == secret
        assert log.ids() == keep
        assert [s["id"] for s in log.sessions()] == ["keep"]
        _assert_absent(path, CANARY)
        audit = log.forget_audit()[-1]
        assert audit["selector"] == selector and audit["deleted_count"] == 20
        # New rows never reuse a forgotten id (the step journal refers to ids).
        assert log.append(session_id="keep", prompt="x", response="y") > max(secret)


def test_delete_is_found_by_substring_and_by_word(tmp_path):
    with InteractionLog(tmp_path / "log.db") as log:
        a = log.append(session_id="s", prompt="my code is xyzzy42plugh", response="ok")  # substring only
        b = log.append(session_id="s", prompt="Café Mañana meeting", response="ok")  # accent-insensitive word
        c = log.append(session_id="s", prompt="unrelated", response="ok")
        assert log.delete(match="zzy42") == [a]
        assert log.delete(match="cafe manana") == [b]
        assert log.ids() == [c]


def test_delete_rejects_ambiguous_selectors(tmp_path):
    with InteractionLog(tmp_path / "log.db") as log:
        log.append(session_id="s", prompt="p", response="r")
        with pytest.raises(LogInputError, match="exactly one"):
            log.delete()
        with pytest.raises(LogInputError, match="exactly one"):
            log.delete(ids=[1], session_id="s")
        with pytest.raises(LogInputError, match="empty"):
            log.delete(match="   ")
        assert log.count() == 1 and log.forget_audit() == []


def test_interrupted_forget_is_finished_on_open(tmp_path):
    """A delete committed but not yet checkpointed (process died) is completed by the next open."""
    path = tmp_path / "log.db"
    with InteractionLog(path) as log:
        for i in range(30):
            log.append(session_id="s", prompt=f"{CANARY} {_filler(i)}", response="r")
    # Simulate a crash between the delete's commit and its WAL truncation: do the
    # delete's SQL by hand, leaving the audit row incomplete, and never checkpoint.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("BEGIN")
    conn.execute("DELETE FROM interactions")
    conn.execute("INSERT INTO interactions_fts(interactions_fts) VALUES ('optimize')")
    conn.execute(
        "INSERT INTO forget_audit (requested_at, selector, deleted_count, deleted_ids) VALUES (0, 'match', 30, '[]')"
    )
    conn.execute("COMMIT")
    reader = sqlite3.connect(path)  # a second connection keeps close() from checkpointing
    reader.execute("SELECT count(*) FROM sessions").fetchall()
    conn.close()
    assert any(CANARY.encode() in open(str(path) + s, "rb").read() for s in ("", "-wal"))
    with InteractionLog(path, busy_timeout_s=5) as log:
        assert log.forget_audit()[0]["completed_at"] is not None
        _assert_absent(path, CANARY)
    reader.close()
