"""Serving and learning in parallel: no torn reads, clean attach/detach, determinism, isolation
of failures. Real threads, a real SQLite log; every wait has a timeout."""

import threading

import torch

from synclearn.chat import ChatSession
from synclearn.data import chat_pairs
from synclearn.learn import Learner
from synclearn.memory import InteractionLog

from .conftest import snapshot, tiny_mcsd

TIMEOUT = 120


def fill(log, n, seed=0):
    for pair in chat_pairs(n, seed):
        log.append(session_id="teacher", **pair)


def plastic_checksum(model):
    return float(sum(w.double().sum() for mlp in model.mlps for w in (mlp.up.weight, mlp.down.weight)))


def test_no_decode_step_sees_a_half_written_update(tmp_path):
    model = tiny_mcsd()
    with InteractionLog(tmp_path / "train.db") as train:
        fill(train, 16)
        learner = Learner(model, train, neuron_fraction=0.2)
        session = ChatSession(model, max_new_tokens=40, temperature=1.0, seed=0)
        guard, records = learner.guard, []
        original_step = model.step

        def instrumented_step(ids_t, state, **kw):  # called by the session under the read lock
            v0, c0 = guard.version, plastic_checksum(model)
            out = original_step(ids_t, state, **kw)
            records.append((v0, guard.version, c0, plastic_checksum(model)))
            return out

        model.step = instrumented_step
        handle = learner.attach(session, idle_only=False, idle_replay=True, poll_s=0.01)  # commit in a tight loop
        try:
            assert handle.wait_for_steps(1, TIMEOUT)
            while len({r[0] for r in records}) < 3 and handle.attached:
                session.send("tell me something")
        finally:
            status = handle.detach(TIMEOUT)
        assert status["steps"] >= 2 and not status["errors"]
        assert len({r[0] for r in records}) >= 3  # serving really overlapped several commits
        for v0, v1, c0, c1 in records:
            assert v0 == v1 and c0 == c1  # one version, untouched weights, for the whole step


def test_attach_detach_repeatedly_while_serving(tmp_path):
    model = tiny_mcsd()
    with InteractionLog(tmp_path / "log.db") as log:
        fill(log, 8)
        session = ChatSession(model, log, max_new_tokens=8)
        learner = Learner(model, neuron_fraction=0.1)
        stop, errors, replies = threading.Event(), [], []

        def serve():
            try:
                while not stop.is_set():
                    replies.append(session.send("keep talking"))
            except Exception as err:  # surfaced by the assertion below
                errors.append(err)

        server = threading.Thread(target=serve)
        server.start()
        try:
            for _ in range(4):
                handle = learner.attach(session, max_defer_s=0.05, poll_s=0.01)
                handle.wait_for_steps(1, TIMEOUT)
                assert handle.detach(TIMEOUT)["attached"] is False
        finally:
            stop.set()
            server.join(TIMEOUT)
        assert not server.is_alive() and not errors and replies
        assert learner.guard.version >= 4
        # replies record the versions they were generated with, never going backwards
        firsts = [r.versions[0] for r in replies]
        assert firsts == sorted(firsts)


def test_detach_with_a_step_in_flight_finishes_cleanly(tmp_path):
    model = tiny_mcsd()
    with InteractionLog(tmp_path / "log.db") as log:
        fill(log, 30)
        session = ChatSession(model, log)
        learner = Learner(model, neuron_fraction=0.1)
        handle = learner.attach(session, idle_replay=True, poll_s=0.01)
        handle.wait_for_steps(1, TIMEOUT)
        status = handle.detach(TIMEOUT)  # whatever step is running completes, then the thread ends
        assert status["stopped_reason"] == "detached" and not status["attached"]
        assert status["version"] == learner.guard.version
        learner.attach(session, max_steps=1).wait_for_steps(1, TIMEOUT)  # attachable again


def test_learning_is_bitwise_the_same_with_and_without_serving(tmp_path):
    finals = []
    for serving in (False, True):
        model = tiny_mcsd()
        with InteractionLog(tmp_path / f"train-{serving}.db") as train:
            fill(train, 12, seed=4)
            learner = Learner(model, train, seed=5, neuron_fraction=0.2)
            session = ChatSession(model, max_new_tokens=16, temperature=1.0)
            stop = threading.Event()
            server = threading.Thread(target=lambda: [session.send("busy?") for _ in iter(stop.is_set, True)])
            if serving:
                server.start()
            handle = learner.attach(session, log=train, max_steps=6, max_defer_s=0.02, poll_s=0.01, idle_replay=True,
                                    batch_size=4, replay_ratio=0.5)
            assert handle.wait_for_steps(6, TIMEOUT)
            handle.detach(TIMEOUT)
            stop.set()
            if serving:
                server.join(TIMEOUT)
            finals.append((snapshot(model), learner.optimizer.state_dict()))
    (w1, o1), (w2, o2) = finals
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    for layer in o1["layers"]:
        assert all(torch.equal(o1["layers"][layer][k], o2["layers"][layer][k]) for k in ("neurons", "m", "v", "t"))


def test_a_failing_learner_never_stops_serving(tmp_path):
    model = tiny_mcsd()
    train = InteractionLog(tmp_path / "train.db")
    fill(train, 4)
    session = ChatSession(model, max_new_tokens=6)
    learner = Learner(model, train)
    handle = learner.attach(session, log=train, idle_replay=True, poll_s=0.01)
    handle.wait_for_steps(1, TIMEOUT)
    train.close()  # the learner's data source fails under it
    deadline = threading.Event()
    while not handle.status()["errors"] and not deadline.wait(0.01):
        pass
    assert session.send("still there?").completion_tokens > 0
    status = handle.status()
    assert status["attached"] and any("Closed" in e or "closed" in e for e in status["errors"])
    handle.detach(TIMEOUT)

    with InteractionLog(tmp_path / "train2.db") as train2:  # on_error="stop" ends the learner instead
        fill(train2, 4)
        handle = learner.attach(session, log=train2, on_error="stop", idle_replay=True, poll_s=0.01)
        handle.wait_for_steps(1, TIMEOUT)
        train2.close()
        handle._thread.join(TIMEOUT)
        assert handle.status()["stopped_reason"] == "error"
        assert session.send("and now?").completion_tokens > 0
