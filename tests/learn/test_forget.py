"""Forget requests: exact (bitwise the never-learned model), approximate, bounded journal,
no-ops and bad selectors, and crash consistency with a real SIGKILL."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from synclearn.chat.checkpoint import CheckpointStore
from synclearn.data import chat_pairs
from synclearn.learn import Learner
from synclearn.learn.forget import ForgetError
from synclearn.memory import InteractionLog

from .conftest import snapshot, tiny_mcsd
from .test_sparse import assert_nested_equal

CHILD = Path(__file__).with_name("forget_child.py")


def learn_history(tmp_path, name, update="sparse", skip=(), journal_steps=1000, n=12, anchors=None, **learner_kw):
    model = tiny_mcsd()
    log = InteractionLog(tmp_path / f"{name}.db")
    ids = log.append_many([{"session_id": f"user{i % 3}", **p} for i, p in enumerate(chat_pairs(n, seed=3))])
    learner = Learner(model, log, update=update, journal=None if journal_steps is None else tmp_path / f"{name}-j",
                      neuron_fraction=0.2, seed=1, optimizer_capacity=40, **learner_kw)
    if learner.journal is not None:
        learner.journal.max_steps = journal_steps
    examples = [{"id": r["id"], "prompt": r["prompt"], "response": r["response"]} for r in log.get_many(ids)]
    if anchors is not None:  # the base's predictions, recorded before any step
        learner.set_anchors(anchors(model))
    for size in (3, 4):  # two passes with different groupings: later steps replay earlier records
        for i in range(0, n, size):
            batch = [e for e in examples[i : i + size] if e["id"] not in skip]
            if batch:
                learner.step(batch + (learner.anchors.draw(size * 100 + i) if anchors is not None else []))
    return model, learner, ids


@pytest.mark.parametrize("update", ["sparse", "full", "lora"])
def test_exact_forget_equals_never_learning(tmp_path, update):
    model_a, a, ids = learn_history(tmp_path, "a", update)
    forgotten = [ids[4], ids[9]]
    report = a.forget(ids=forgotten)
    model_b, b, _ = learn_history(tmp_path, "b", update, skip=set(forgotten))
    assert report.mode == "exact" and report.deleted == 2 and report.learned
    assert report.steps_rolled_back > 0 and report.steps_rerun > 0
    wa, wb = snapshot(model_a), snapshot(model_b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert_nested_equal(a.optimizer.state_dict(), b.optimizer.state_dict())
    assert a.committed_steps == b.committed_steps
    assert a.log.get_many(forgotten) == [] and a.log.count() == len(ids) - 2
    assert not a.log.files_containing(a.log.get(ids[0])["prompt"]) == []  # the rest is still there
    # the forgotten text left the journal too
    journal_bytes = b"".join(p.read_bytes() for p in a.journal.path.glob("step-*.safetensors"))
    for row_id in forgotten:
        text = chat_pairs(12, seed=3)[ids.index(row_id)]["response"].encode()
        assert text not in journal_bytes or any(
            text == chat_pairs(12, seed=3)[j]["response"].encode() for j in range(12) if ids[j] not in forgotten)


def test_forget_by_session_and_by_text(tmp_path):
    model, learner, ids = learn_history(tmp_path, "a")
    rows = {r["id"]: r for r in learner.log.get_many(ids)}
    report = learner.forget(session_id="user2")
    assert sorted(report.ids) == sorted(i for i, r in rows.items() if r["session_id"] == "user2")
    target = next(r for r in rows.values() if r["id"] not in report.ids)
    word = target["prompt"].split()[2]
    report = learner.forget(match=word)
    assert target["id"] in report.ids and report.mode == "exact"
    assert learner.log.select_ids(match=word) == []


def test_noop_and_bad_selectors(tmp_path):
    model, learner, ids = learn_history(tmp_path, "a")
    before = snapshot(model)
    report = learner.forget(match="zebra-that-was-never-said")
    assert report.mode == "noop" and report.ids == [] and "nothing matched" in report.note
    new_id = learner.log.append(session_id="late", prompt="never learned", response="right")
    report = learner.forget(ids=[new_id])
    assert report.mode == "noop" and report.deleted == 1 and "never learned" in report.note
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(ForgetError, match="exactly one"):
        learner.forget(ids=[1], session_id="user1")
    with pytest.raises(ForgetError, match="exactly one"):
        learner.forget()
    with pytest.raises(ForgetError, match="mode="):
        learner.forget(ids=[ids[0]], mode="fast")
    assert learner.log.count() == len(ids)  # nothing lost to the bad requests


def test_journal_bound_and_requests_older_than_the_window(tmp_path):
    model, learner, ids = learn_history(tmp_path, "a", journal_steps=3)
    assert len(learner.journal) == 3 and len(list(learner.journal.path.glob("step-*.safetensors"))) == 3
    old = ids[0]  # learned in the first steps only, which left the window
    with pytest.raises(ForgetError, match="older than the journal window"):
        learner.forget(ids=[old])
    assert learner.log.get(old) is not None  # refused requests delete nothing
    report = learner.forget(ids=[old], mode="auto", max_unlearn_steps=5)
    assert report.mode == "approximate" and report.deleted == 1 and learner.log.get(old) is None
    journal = learner.journal
    journal_bytes = learner.journal.nbytes
    assert journal_bytes == 0 or len(journal) <= 3


def test_approximate_forget_reaches_never_seen_level_and_keeps_the_rest(tmp_path):
    from synclearn.model import load_model

    facts = [{"prompt": f"What is {n}'s code?", "response": f"{n}'s code is {c}."}
             for n, c in [("Ada", "K7Q"), ("Bo", "Z3P"), ("Cy", "M9X"), ("Di", "R2T")]]
    model = load_model("mcsd-tiny")
    log = InteractionLog(tmp_path / "log.db")
    ids = log.append_many([{"session_id": "s", **f} for f in facts])
    learner = Learner(model, log, update="full", lr=3e-3)
    examples = [{"id": i, **f} for i, f in zip(ids, facts)]
    for _ in range(60):
        learner.step(examples)
    report = learner.forget(ids=[ids[0]], mode="approximate", max_unlearn_steps=60, retain_k=3)
    assert report.mode == "approximate" and report.unlearn_steps > 0
    assert report.forgotten_nll_before < report.control_nll - 0.5  # it had been learned
    assert report.forgotten_nll_after >= report.control_nll - 0.25  # down to the never-seen level
    assert report.retained_nll_after <= report.retained_nll_before + 0.5  # the rest stays
    assert log.get(ids[0]) is None


def run_child(root, *extra):
    return subprocess.Popen([sys.executable, str(CHILD), str(root), *extra], stdout=subprocess.PIPE, text=True)


def restore(root):
    """What a restarting server does: load the checkpoint (which finishes or discards an
    interrupted forget, ``Learner.recover``)."""
    from .forget_child import make_learner

    model, learner, _ = CheckpointStore(root / "ckpt").restore(lambda m: make_learner(root, m))
    return model, learner


def test_a_crash_in_the_middle_of_a_forget_leaves_model_and_log_consistent(tmp_path):
    # references: the state before the forget, and after a forget that completed
    before_root, after_root = tmp_path / "before", tmp_path / "after"
    for root, extra in ((before_root, ["--no-forget"]), (after_root, [])):
        root.mkdir()
        proc = run_child(root, *extra)
        assert proc.stdout.readline().strip() == "READY"
        t0 = time.monotonic()
        assert proc.wait(timeout=120) == 0
    forget_s = time.monotonic() - t0  # how long a whole forget takes: kills land inside it
    before_model, _ = restore(before_root)
    after_model, after_learner = restore(after_root)
    before_w, after_w = snapshot(before_model), snapshot(after_model)
    forgotten = set(before_model and InteractionLog(before_root / "log.db").select_ids(session_id="user1"))
    assert forgotten and not after_learner.log.select_ids(session_id="user1")

    rng = random.Random(0)
    outcomes = []
    trials = [["--kill-before-persist"], ["--kill-after-persist"]] + [[]] * 8
    for trial, extra in enumerate(trials):
        root = tmp_path / f"trial{trial}"
        root.mkdir()
        proc = run_child(root, *extra)
        assert proc.stdout.readline().strip() == "READY"
        try:
            proc.wait(timeout=rng.uniform(0.0, forget_s) if not extra else 120)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        model, learner = restore(root)
        w = snapshot(model)
        rows_present = bool(learner.log.select_ids(session_id="user1"))
        outcomes.append("before" if rows_present else "after")
        if rows_present:  # before: the weights still hold the records, the journal can undo them
            assert all(torch.equal(w[k], before_w[k]) for k in w)
            assert learner.forget(session_id="user1").mode == "exact"  # and forgetting still works
            w = snapshot(model)
        assert all(torch.equal(w[k], after_w[k]) for k in w)
        assert learner.log.integrity_check() == "ok"
        assert not list((root / "journal").glob("staging-*"))
    assert outcomes[:2] == ["before", "after"]  # the two sides of the commit point
