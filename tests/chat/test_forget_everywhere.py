"""The operator's forget: a fact leaves every session of the log (the users' words and the
model's own replies) and, exactly, the weights: bitwise the model that never learned it."""

import torch

from synclearn.chat.runtime import NotFound, Runtime
from synclearn.data import chat_pairs
from synclearn.learn import Learner
from synclearn.memory import InteractionLog
from tests.learn.conftest import snapshot, tiny_mcsd
from tests.learn.test_sparse import assert_nested_equal

import pytest

FACT_ROWS = [  # (session, prompt, response, correction): the fact in a prompt, a reply, a correction
    ("s1", "Remember: Ada's pet is a zibbo.", "Noted.", None),
    ("s2", "What is Ada's pet?", "Ada has a ZIBBO named Kiki.", None),
    ("s3", "Who sings at dawn?", "The dog.", "Ada's zibbo sings at dawn."),
]


def history(tmp_path, name, skip_fact=False):
    """A runtime whose learner learned 8 ordinary rows and the 3 fact rows (unless skipped)."""
    log = InteractionLog(tmp_path / f"{name}.db")
    rows = [{"session_id": f"s{i % 4}", **p} for i, p in enumerate(chat_pairs(8, seed=5))]
    ids = log.append_many(rows[:4])
    fact_ids = []
    for sid, prompt, response, correction in FACT_ROWS:
        fact_ids.append(log.append(sid, prompt, response))
        if correction:
            log.set_feedback(fact_ids[-1], correction=correction)
    ids = ids[:4] + fact_ids + log.append_many(rows[4:])
    learner = Learner(tiny_mcsd(), log, journal=tmp_path / f"{name}-journal", neuron_fraction=0.2, seed=1,
                      optimizer_capacity=40)
    examples = [{"id": r["id"], "prompt": r["prompt"], "response": r["feedback_correction"] or r["response"]}
                for r in log.get_many(ids)]
    for size in (3, 4):  # two passes with different groupings: later steps replay earlier rows
        for i in range(0, len(examples), size):
            batch = [e for e in examples[i : i + size] if not (skip_fact and e["id"] in fact_ids)]
            if batch:
                learner.step(batch)
    return Runtime(learner.model, log, learner), fact_ids


def test_operator_forget_leaves_no_mention_in_any_session_and_is_exact(tmp_path):
    rt, fact_ids = history(tmp_path, "a")
    never, _ = history(tmp_path, "b", skip_fact=True)
    try:
        report = rt.forget_everywhere(match="zibbo")
        assert report["mode"] == "exact" and sorted(report["ids"]) == sorted(fact_ids) and report["deleted"] == 3
        assert report["steps_rolled_back"] > 0
        texts = [(r["prompt"], r["response"], r["feedback_correction"] or "") for r in rt.log.iter_rows()]
        assert texts and not any("zibbo" in t.casefold() for row in texts for t in row)
        assert rt.log.files_containing("zibbo") == [] and rt.log.files_containing("ZIBBO") == []
        assert {r["session_id"] for r in rt.log.iter_rows()} == {"s0", "s1", "s2", "s3"}  # the rest stays
        wa, wb = snapshot(rt.model), snapshot(never.model)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bitwise the model that never learned it
        assert_nested_equal(rt.learner.optimizer.state_dict(), never.learner.optimizer.state_dict())
    finally:
        rt.log.close()
        never.log.close()


def test_operator_forget_by_ids_and_time_and_bad_requests(tmp_path):
    rt, fact_ids = history(tmp_path, "a")
    try:
        with pytest.raises(NotFound, match="no interactions \\[99999\\]"):
            rt.forget_everywhere(ids=[fact_ids[0], 99999])
        with pytest.raises(ValueError, match="exactly one of"):
            rt.forget_everywhere(ids=[fact_ids[0]], match="zibbo")
        with pytest.raises(ValueError, match="time range is empty"):
            rt.forget_everywhere(since=10.0, until=5.0)
        assert rt.forget_everywhere(match="no such words")["mode"] == "noop"
        assert rt.forget_everywhere(ids=[fact_ids[1]])["deleted"] == 1
        t = rt.log.get(fact_ids[2])["created_at"]
        report = rt.forget_everywhere(since=t, mode="auto")
        assert fact_ids[2] in report["ids"] and all(r["created_at"] < t for r in rt.log.iter_rows())
        assert rt.log.get(fact_ids[0]) is not None
    finally:
        rt.log.close()
