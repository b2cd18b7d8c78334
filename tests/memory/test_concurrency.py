"""Concurrency: writer threads, reader threads and a forget at once; no errors, no lost rows."""

import threading

from synclearn.memory import InteractionLog

WRITERS, READERS, ROWS_PER_WRITER = 3, 4, 150


def test_writers_readers_and_a_delete_at_once(tmp_path):
    path = tmp_path / "log.db"
    errors: list[BaseException] = []
    written: dict[int, list[int]] = {w: [] for w in range(WRITERS)}
    done = threading.Event()
    start = threading.Barrier(WRITERS + READERS + 1)

    def guarded(fn):
        def run(*args):
            try:
                start.wait(timeout=30)
                fn(*args)
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        return run

    with InteractionLog(path, busy_timeout_s=30) as log:
        secret = log.append(session_id="secret", prompt="qxcanary secret row", response="r")

        @guarded
        def writer(w: int) -> None:
            for n in range(ROWS_PER_WRITER):
                rid = log.append(session_id=f"w{w}", prompt=f"writer {w} row {n} lorem ipsum", response=f"{n}")
                written[w].append(rid)
                if n % 10 == 0:
                    log.set_feedback(rid, score=float(n))
                    log.mark_replayed([rid])

        @guarded
        def reader(r: int) -> None:
            last_seen = [0] * WRITERS
            while not done.is_set():
                log.count()
                for w in range(WRITERS):
                    rows = log.by_session(f"w{w}")
                    assert len(rows) >= last_seen[w], "a committed row disappeared"
                    last_seen[w] = len(rows)
                    assert [x["turn"] for x in rows] == list(range(len(rows)))
                    if rows:
                        assert log.get(rows[-1]["id"])["prompt"].startswith(f"writer {w} row")
                log.search("lorem ipsum", limit=5)
                log.with_feedback(min_score=0)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
        threads += [threading.Thread(target=reader, args=(r,)) for r in range(READERS)]
        for t in threads:
            t.start()
        start.wait(timeout=30)
        # A forget in the middle: its WAL truncation must wait out the readers, not fail.
        assert log.delete(ids=[secret], reason="test") == [secret]
        for t in threads[:WRITERS]:
            t.join(timeout=120)
        done.set()
        for t in threads[WRITERS:]:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a thread hung"
        if errors:
            raise errors[0]

        all_ids = [i for ids in written.values() for i in ids]
        assert len(set(all_ids)) == WRITERS * ROWS_PER_WRITER
        assert log.count() == WRITERS * ROWS_PER_WRITER
        assert sorted(log.ids()) == sorted(all_ids)
        for w, ids in written.items():
            assert [r["id"] for r in log.by_session(f"w{w}")] == ids  # turn order = append order
        assert log.files_containing("qxcanary") == []
        assert log.integrity_check() == "ok"


def test_two_processes_worth_of_connections_never_see_busy(tmp_path):
    """Two logs on one file (as two processes would have): writes interleave, both succeed."""
    path = tmp_path / "log.db"
    errors: list[BaseException] = []
    with InteractionLog(path) as a, InteractionLog(path) as b:

        def work(log: InteractionLog, name: str) -> None:
            try:
                for n in range(100):
                    log.append(session_id=name, prompt=f"{name} {n}", response="r")
                    log.count()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(log, name)) for log, name in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        if errors:
            raise errors[0]
        assert a.count() == b.count() == 200
        assert [r["turn"] for r in b.by_session("a")] == list(range(100))
