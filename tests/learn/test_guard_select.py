"""The readers-writer guard (real threads) and the neuron selection policies."""

import threading

import pytest
import torch

from synclearn.learn import GuardTimeout, WeightGuard, guard_for, select_random, select_topk

TIMEOUT = 10


def test_readers_share_and_writer_excludes():
    guard = WeightGuard()
    inside, release = threading.Barrier(3, timeout=TIMEOUT), threading.Event()

    def reader():
        with guard.read():
            inside.wait()  # both readers are inside at once
            release.wait(TIMEOUT)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    with pytest.raises(GuardTimeout):
        with guard.write(timeout=0.05):
            pass
    release.set()
    for t in threads:
        t.join(TIMEOUT)
    with guard.write() as v:
        assert v == 1
    assert guard.version == 1


def test_waiting_writer_blocks_new_readers_and_failed_commit_keeps_version():
    guard = WeightGuard()
    reading, writer_waiting, done = threading.Event(), threading.Event(), threading.Event()

    def long_reader():
        with guard.read():
            reading.set()
            writer_waiting.wait(TIMEOUT)
    r = threading.Thread(target=long_reader)
    r.start()
    reading.wait(TIMEOUT)

    def writer():
        with guard.write():
            done.set()
    w = threading.Thread(target=writer)
    w.start()
    while not guard._writers_waiting:  # the writer is queued
        threading.Event().wait(0.001)
    with pytest.raises(GuardTimeout):
        with guard.read(timeout=0.05):
            pass
    writer_waiting.set()
    assert done.wait(TIMEOUT)
    r.join(TIMEOUT), w.join(TIMEOUT)
    with pytest.raises(RuntimeError):
        with guard.write():
            raise RuntimeError("commit failed")
    assert guard.version == 1


def test_guard_for_is_one_per_model():
    m1, m2 = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert guard_for(m1) is guard_for(m1) and guard_for(m1) is not guard_for(m2)


def test_topk_takes_the_strongest_minus_locked_and_only_active():
    scores = torch.tensor([0.0, 5.0, 1.0, 4.0, 0.0, 3.0, 2.0])
    assert select_topk(scores, 3).tolist() == [1, 3, 5]
    locked = torch.zeros(7, dtype=torch.bool)
    locked[3] = True
    assert select_topk(scores, 3, locked=locked).tolist() == [1, 5, 6]
    assert select_topk(scores, 10).tolist() == [1, 2, 3, 5, 6]  # zeros never picked


def test_exploration_draws_from_active_neurons_below_the_cut():
    scores = torch.arange(1, 101, dtype=torch.float32)  # neuron i has score i + 1
    gen = torch.Generator().manual_seed(0)
    picked = select_topk(scores, 10, exploration=0.3, generator=gen)
    assert len(picked) == 10
    assert set(range(93, 100)) <= set(picked.tolist())  # the 7 strongest
    assert len(set(picked.tolist()) - set(range(90, 100))) == 3  # 3 explored below the cut


def test_random_selector_is_uniform_and_respects_locks():
    gen = torch.Generator().manual_seed(0)
    locked = torch.zeros(20, dtype=torch.bool)
    locked[:5] = True
    counts = torch.zeros(20)
    for _ in range(2000):
        counts[select_random(torch.zeros(20), 3, locked=locked, generator=gen)] += 1
    assert counts[:5].sum() == 0
    expected = 2000 * 3 / 15
    assert ((counts[5:] - expected).abs() < 0.2 * expected).all()
