"""The learner core's seams: update rules as plug-ins, the public steering API, and the bugs of
issue 13 (each test failed before its fix). Real threads, a real SQLite log, real gradients."""

import hashlib
import threading

import pytest
import torch

from synclearn.chat import ChatSession
from synclearn.data import chat_pairs
from synclearn.learn import Learner, guard_for
from synclearn.learn.updates import UPDATE_RULES, UpdateRule
from synclearn.memory import InteractionLog, ReplayBatchBuilder

from .conftest import snapshot, tiny_mcsd

TIMEOUT = 120


def fill(log, n, seed=0):
    return [log.append(session_id="teacher", **pair) for pair in chat_pairs(n, seed)]


def digest(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# -- plug-ins and the public API ------------------------------------------------------------------
def test_every_family_is_an_update_rule_and_the_learner_never_branches_on_it():
    from pathlib import Path

    import synclearn.learn.learner as learner_module

    assert set(UPDATE_RULES) == {"sparse", "lora", "full"}
    assert all(issubclass(rule, UpdateRule) for rule in UPDATE_RULES.values())
    source = Path(learner_module.__file__).read_text()
    for family in ("sparse", "lora", "full"):
        assert f'update == "{family}"' not in source and f'update != "{family}"' not in source


@pytest.mark.parametrize("update", ["sparse", "full"])
def test_step_observers_get_the_result_and_the_changed_rows_gradients(update, examples):
    learner = Learner(tiny_mcsd(), update=update, neuron_fraction=0.2)
    seen = []

    def observe(result, grads):
        seen.append((result, grads))

    learner.add_step_observer(observe)
    result = learner.step(examples[:3])
    assert len(seen) == 1 and seen[0][0] is result and not result.skipped
    grads = seen[0][1]
    if update == "sparse":
        assert set(grads) == set(result.neurons)
        assert all(grads[layer].shape[0] == len(result.neurons[layer]) for layer in grads)
    else:
        assert grads == {}
    learner.add_regularizer(lambda: torch.tensor(float("nan")))
    assert learner.step(examples[:3]).skipped and len(seen) == 1  # a skipped step is not observed
    learner.remove_step_observer(observe)


def test_protection_and_controls_are_validated_copies(examples):
    learner = Learner(tiny_mcsd(), neuron_fraction=0.5)
    learner.protect(2, [0, 1, 2])
    mask = learner.protected(2)
    mask[:] = True  # a copy: the learner is unchanged
    assert int(learner.protected(2).sum()) == 3
    learner.unprotect(2, [1])
    assert learner.protected(2).nonzero().flatten().tolist() == [0, 2]
    with pytest.raises(ValueError, match="neuron ids of layer 2"):
        learner.protect(2, [10_000])
    with pytest.raises(ValueError, match="expected \\(128,\\)"):
        learner.set_lr_scale(2, torch.ones(3))
    with pytest.raises(ValueError, match="layer=7"):
        learner.set_background(7, torch.ones(128))
    assert learner.free_share() == {**{layer: 1.0 for layer in learner.plastic_layers}, 2: 1 - 2 / 128}
    learner.set_protected(2, torch.ones(128, dtype=torch.bool))
    assert learner.free_share()[2] == 0.0
    result = learner.step(examples[:2])
    assert 2 not in result.neurons  # every neuron of layer 2 is protected
    assert Learner(tiny_mcsd(), update="lora").free_share() == {}  # no neurons to protect
    # damped neurons are free but count as learning only at >= half the rate
    learner.set_protected(2, None)
    scale = torch.ones(128)
    scale[:32] = 0.1
    scale[32:48] = 0.5
    learner.set_lr_scale(2, scale)
    learner.protect(2, [100])
    assert learner.free_share()[2] == 1 - 1 / 128
    assert learner.learning_share()[2] == (128 - 32 - 1) / 128
    assert learner.learning_share(min_scale=0.6)[2] == (128 - 48 - 1) / 128
    assert Learner(tiny_mcsd(), update="lora").learning_share() == {}


def test_selectors_receive_the_background_statistics(examples):
    seen = []

    def spy(scores, k, *, locked, exploration, generator, background=None):
        seen.append(background)
        return torch.topk(scores, k).indices.sort().values

    learner = Learner(tiny_mcsd(), selector=spy, neuron_fraction=0.1, plastic_layers=[2])
    learner.set_background(2, torch.arange(128.0))
    learner.step(examples[:2])
    assert torch.equal(seen[0], torch.arange(128.0))


def test_sgd_learner_updates_rows_like_torch_sgd(examples):
    learner = Learner(tiny_mcsd(), optimizer="sgd", lr=0.05, neuron_fraction=0.2, clip_norm=0)
    before = snapshot(learner.model)
    assert learner.training_state_bytes() == 0
    learner.step(examples[:2])
    after = snapshot(learner.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="optimizer='adam'"):
        Learner(tiny_mcsd(), optimizer="adam")


# -- bugs -------------------------------------------------------------------------------------------
def test_a_thread_started_after_the_learner_ran_keeps_the_thread_count(tmp_path):
    main_threads = torch.get_num_threads()
    if main_threads < 2:
        torch.set_num_threads(2)
    try:
        expected = torch.get_num_threads()
        model = tiny_mcsd()
        with InteractionLog(tmp_path / "log.db") as log:
            fill(log, 4)
            learner = Learner(model, neuron_fraction=0.1)
            in_learner = []
            learner.add_step_observer(lambda result, grads: in_learner.append(torch.get_num_threads()))
            handle = learner.attach(ChatSession(model, log), learn_threads=1, poll_s=0.01, new_repeats=1)
            assert handle.wait_for_steps(1, TIMEOUT)
            during = []
            t = threading.Thread(target=lambda: during.append(torch.get_num_threads()))
            t.start()
            t.join(TIMEOUT)
            handle.detach(TIMEOUT)
        after = []
        t = threading.Thread(target=lambda: after.append(torch.get_num_threads()))
        t.start()
        t.join(TIMEOUT)
        assert in_learner[0] == 1  # the learner thread computes with learn_threads
        assert during == [expected] and after == [expected]  # a request thread started later does not
    finally:
        torch.set_num_threads(main_threads)


def test_a_skipped_step_leaves_its_rows_unlearned(tmp_path):
    with InteractionLog(tmp_path / "log.db") as log:
        ids = fill(log, 4)
        learner = Learner(tiny_mcsd(), log, neuron_fraction=0.1)
        learner.add_regularizer(lambda: torch.tensor(float("inf")))  # every step is non-finite
        results = learner.run(2, batch_size=4, replay_ratio=0.0)
        assert results and all(r.skipped for r in results)
        assert log.ids(learned=True) == [] and log.ids(learned=False) == ids


def test_a_failing_step_leaves_its_rows_unlearned_and_sets_them_aside(tmp_path):
    with InteractionLog(tmp_path / "log.db") as log:
        good = fill(log, 2)
        bad = log.append(session_id="s", prompt="p", response="x")  # learnable text ...
        builder = ReplayBatchBuilder(log, batch_size=4, replay_ratio=0.0, max_attempts=2)
        for _ in range(6):  # ... but a step with it fails (e.g. the learner raised); the others learn
            batch = builder.next_batch()
            if not batch:
                break
            if bad in [e["id"] for e in batch]:
                builder.reject(batch, "RuntimeError: boom")
            else:
                builder.commit(batch)
        builder.next_batch()
        assert bad in builder.set_aside and not builder.has_new  # only replay is left
        assert log.ids(learned=True) == good and log.ids(learned=False) == [bad]


def test_an_empty_reply_is_never_marked_learned(tmp_path):
    model = tiny_mcsd()
    with InteractionLog(tmp_path / "log.db") as log:
        empty = log.append(session_id="s", prompt="Hello, who are you?", response="")
        learner = Learner(model, log, neuron_fraction=0.1)
        assert learner.run(3) == []  # nothing to learn: no step, nothing marked
        handle = learner.attach(ChatSession(model, log), poll_s=0.01)
        handle.wait_for_steps(1, 0.5)
        handle.detach(TIMEOUT)
        assert log.get(empty)["learned_at"] is None
        log.mark_learned([empty])  # as an older synclearn did, without a step
        report = learner.forget(ids=[empty], mode="auto")  # raised TypeError (None >= None) before
        assert report.deleted == 1 and report.unlearn_steps == 0 and "no text" in report.note


def test_forgetting_what_was_never_learned_says_so(tmp_path):
    with InteractionLog(tmp_path / "log.db") as log:
        ids = fill(log, 2)
        log.mark_learned(ids)  # e.g. marked by an older synclearn, no step in the journal
        learner = Learner(tiny_mcsd(), log, journal=tmp_path / "journal")
        report = learner.forget(ids=[ids[0]])
        assert report.mode == "noop" and "never learned" in report.note and "window" not in report.note
        report = learner.forget(ids=[ids[1]], mode="auto")
        assert report.mode == "noop" and report.deleted == 1


def test_concurrent_guard_for_creates_one_guard():
    for _ in range(20):
        model = tiny_mcsd()
        barrier, guards = threading.Barrier(8), []

        def get():
            barrier.wait()
            guards.append(guard_for(model))

        threads = [threading.Thread(target=get) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert len({id(g) for g in guards}) == 1 and guards[0] is guard_for(model)


def test_unlearn_after_uses_the_change_counter_not_the_clock(tmp_path):
    with InteractionLog(tmp_path / "log.db") as log:
        ids = fill(log, 3)
        log.mark_learned(ids[:1], now=1000.0)
        seq = log.change_seq()  # a checkpoint here
        log.mark_learned(ids[1:], now=500.0)  # the clock went back after the checkpoint
        assert log.unlearn_since(1000.0) == 0  # the wall-clock rule misses them
        assert log.unlearn_after(seq) == 2
        assert log.ids(learned=True) == ids[:1]


@pytest.mark.parametrize("update", ["sparse", "full"])
def test_serving_sees_the_weights_before_or_after_an_exact_forget_never_between(tmp_path, update):
    with InteractionLog(tmp_path / "log.db") as log:
        ids = fill(log, 8, seed=3)
        model = tiny_mcsd()
        learner = Learner(model, log, update=update, journal=tmp_path / "journal", neuron_fraction=0.2, seed=1)
        rows = log.get_many(ids)
        examples = [{"id": r["id"], "prompt": r["prompt"], "response": r["response"]} for r in rows]
        for i in range(0, 8, 2):
            learner.step(examples[i : i + 2])
        before = digest(model)
        seen, stop = set(), threading.Event()

        def reader():
            while not stop.is_set():
                with learner.guard.read():
                    seen.add(digest(model))

        t = threading.Thread(target=reader)
        t.start()
        try:
            report = learner.forget(ids=[ids[0]])
        finally:
            stop.set()
            t.join(TIMEOUT)
        after = digest(model)
        assert report.mode == "exact" and report.steps_rolled_back == 4 and before != after
        assert seen <= {before, after} and before in seen
