"""Anchors: the recorded predictions, the coarsened KL against a hand computation, what they do
to a step (selection unchanged, drift held back), bad input, exact forgetting with anchors, and
the memory manager handing them to an attached learner."""

import math

import pytest
import torch

from synclearn.data import chat_pairs
from synclearn.learn import Learner
from synclearn.learn.anchors import AnchorRows, AnchorSet, anchor_settings_errors, anchor_turns
from synclearn.learn.batch import LearnerInputError
from synclearn.memory import MemoryManager

from .conftest import snapshot, tiny_mcsd
from .test_forget import learn_history
from .test_sparse import assert_nested_equal

FACT = {"prompt": "What is Kado's pet?", "response": "It's a parrot."}


def small_set(model, n=24, **options):
    return AnchorSet.build(model, anchor_turns(n, seed=0, text_chars=48), top_k=4, **options)


def test_anchor_turns_mix_and_determinism():
    items = anchor_turns(40, seed=3, text_chars=32)
    assert items == anchor_turns(40, seed=3, text_chars=32) and items != anchor_turns(40, seed=4, text_chars=32)
    texts = [i for i in items if isinstance(i, str)]
    turns = [i for i in items if isinstance(i, dict)]
    assert len(texts) == 10 and all(len(t) == 32 for t in texts)
    assert len(turns) == 30 and sum(t["response"].startswith("It's ") for t in turns) >= 20


def test_coarsened_kl_matches_a_hand_computation():
    # one anchor row, one counted position, vocabulary of 4, recorded top-2 = tokens 2 and 0
    then = torch.tensor([0.5, 0.3])  # the rest had 0.2
    rows = AnchorRows(rows=torch.tensor([0]), counted=torch.tensor([[1.0, 0.0]]), idx=torch.tensor([[[2, 0], [0, 1]]]),
                      logp=torch.tensor([[[math.log(0.5), math.log(0.3), math.log(0.2)], [0.0, 0.0, 0.0]]]), weight=1.0)
    now = torch.tensor([0.1, 0.2, 0.6, 0.1])  # tokens 2, 0 now 0.6, 0.1; the rest 0.3
    logits = torch.stack([now.log(), torch.zeros(4)])[None]  # [1, T=2, V=4]; position 1 is not counted
    want = 0.5 * math.log(0.5 / 0.6) + 0.3 * math.log(0.3 / 0.1) + 0.2 * math.log(0.2 / 0.3)
    assert float(rows.kl(logits)) == pytest.approx(want, rel=1e-5)
    assert float(then.sum()) == pytest.approx(0.8)


def test_kl_is_zero_on_the_recorded_model_and_the_selection_ignores_anchor_rows():
    model = tiny_mcsd()
    anchors = small_set(model, per_step=6)
    assert anchors.drift(model) == pytest.approx(0.0, abs=1e-6)
    plain, anchored = Learner(tiny_mcsd(), seed=2, neuron_fraction=0.1), Learner(tiny_mcsd(), seed=2, neuron_fraction=0.1)
    anchored.set_anchors(anchors)
    a = plain.step([FACT])
    b = anchored.step([FACT, *anchors.draw(0)])
    assert a.neurons == b.neurons  # anchor rows do not count when the neurons are picked
    assert b.loss == pytest.approx(a.loss, rel=1e-5)  # the model is still the recorded one: KL 0
    assert b.example_losses[1:] == [0.0] * 6


def test_anchors_hold_back_the_drift_of_a_high_lr_step():
    drift = {}
    for with_anchors in (False, True):
        model = tiny_mcsd()
        anchors = small_set(model, n=32, per_step=16, weight=3.0)
        learner = Learner(model, update="full", lr=3e-2, seed=0)
        learner.set_anchors(anchors)
        for step in range(12):
            learner.step([FACT, *(anchors.draw(step, near=[model.tokenizer.encode(FACT["prompt"])]) if with_anchors else [])])
        drift[with_anchors] = anchors.drift(model)
    assert drift[True] < 0.5 * drift[False]


def test_near_draws_prefer_like_prompts_and_are_deterministic():
    model = tiny_mcsd()
    anchors = small_set(model, n=40, per_step=8, near_share=0.5)
    near = [model.tokenizer.encode("What is Bolu's pet?")]
    draw = anchors.draw(5, near=near)
    assert draw == anchors.draw(5, near=near) and len({d["anchor"] for d in draw}) == 8
    prompts = {k: model.tokenizer.decode(anchors.tokens[k]) for k in range(len(anchors))}
    pets = [k for k, text in prompts.items() if "pet" in text]
    chosen = {d["anchor"] for d in draw}
    assert pets and len(chosen & set(pets)) >= min(len(pets), 2)
    assert anchors.draw(6) != anchors.draw(7)


def test_bad_anchor_input_is_refused_and_nothing_changes():
    model = tiny_mcsd()
    learner = Learner(model, seed=0)
    before = snapshot(model)
    with pytest.raises(LearnerInputError, match="needs a learner with anchors"):
        learner.step([FACT, {"anchor": 0}])
    learner.set_anchors(small_set(model))
    with pytest.raises(LearnerInputError, match=r"anchor 99 .*0\.\.23"):
        learner.step([FACT, {"anchor": 99}])
    with pytest.raises(LearnerInputError, match="exactly"):
        learner.step([FACT, {"anchor": 0, "prompt": "x"}])
    with pytest.raises(LearnerInputError, match="only anchor examples"):
        learner.step([{"anchor": 0}, {"anchor": 1}])
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items()) and learner.committed_steps == 0
    assert anchor_settings_errors({"per_step": 200, "turns": 10, "weight": -1, "colour": 1}) == [
        "colour: unknown (expected some of ['near_share', 'per_step', 'top_k', 'turns', 'weight'])",
        "per_step=200 (expected an integer in [0, turns=10])", "weight=-1 (expected >= 0)"]
    with pytest.raises(ValueError, match=r"anchors\.near_share=2"):
        MemoryManager(anchors={"near_share": 2})


@pytest.mark.parametrize("update", ["sparse", "full"])
def test_exact_forget_with_anchors_equals_never_learning(tmp_path, update):
    make = lambda model: small_set(model, per_step=3)  # noqa: E731
    model_a, a, ids = learn_history(tmp_path, "a", update, anchors=make)
    forgotten = [ids[4], ids[9]]
    report = a.forget(ids=forgotten)
    model_b, b, _ = learn_history(tmp_path, "b", update, skip=set(forgotten), anchors=make)
    assert report.mode == "exact" and report.steps_rerun > 0
    wa, wb = snapshot(model_a), snapshot(model_b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert_nested_equal(a.optimizer.state_dict(), b.optimizer.state_dict())


def test_the_manager_hands_anchors_to_the_attached_learner(tmp_path):
    from synclearn.chat import ChatSession
    from synclearn.memory import InteractionLog

    model = tiny_mcsd()
    log = InteractionLog(tmp_path / "log.db")
    memory = MemoryManager(anchors={"turns": 16, "per_step": 4, "top_k": 4}, background="none", new_repeats=2,
                           batch_size=4)
    learner = Learner(model, log, seed=0, memory=memory, journal=tmp_path / "journal")
    assert len(learner.anchors) == 16 and memory.status()["anchors"] == {"held": 16, "per_step": 4, "weight": 1.0}
    session = ChatSession(model, log, max_new_tokens=4)
    handle = learner.attach(session, **memory.attach_options())
    try:
        for pair in chat_pairs(3, seed=1):
            log.append(session_id="s", prompt=pair["prompt"], response=pair["response"])
        assert handle.wait_for_steps(2, timeout=60)
    finally:
        handle.detach()
    steps = [learner.journal.load(i).examples for i in learner.journal.indices]
    assert steps and all(sum("anchor" in e for e in ex) == 4 and any("prompt" in e for e in ex) for ex in steps)
    assert len(log.ids(learned=True)) >= 1  # the anchors did not disturb the rehearsal bookkeeping
    # a restart: the learner state restores the anchors recorded on the base (not re-recorded on the
    # learned weights) and the manager bound afterwards takes its state from it
    restored = Learner(tiny_mcsd(seed=5), seed=0)
    restored.load_state_dict(learner.state_dict())
    other = MemoryManager(anchors={"turns": 16, "per_step": 4, "top_k": 4}, background="none").bind(restored)
    assert other.learner is restored and restored.memory is other
    assert restored.anchors.tokens == learner.anchors.tokens
    assert all(torch.equal(x, y) for x, y in zip(restored.anchors.logp, learner.anchors.logp))
