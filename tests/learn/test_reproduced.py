"""Rehearsal until the model reproduces a turn: ``Batch.reproduced`` against a hand-made case,
``StepResult.example_reproduced`` against the model's own greedy reply, and an attached learner
with ``until_reproduced`` that keeps rehearsing a taught fact until its greedy answer is the fact."""

import pytest
import torch

from synclearn.chat import ChatSession
from synclearn.learn import Learner
from synclearn.learn.batch import Batch, LabelBatch, build_batch
from synclearn.memory import InteractionLog

from .conftest import tiny_mcsd

pytestmark = pytest.mark.usefixtures("one_thread")

FACT = {"prompt": "What is Zoba's pet?", "response": "It's a pony."}


def test_reproduced_against_a_hand_made_case():
    # two examples, three positions, vocabulary 3; example 1's last position is padding
    logits = torch.tensor([[[0.0, 5.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                           [[0.0, 5.0, 0.0], [0.0, 1.0, 2.0], [9.0, 0.0, 0.0]]])
    targets = torch.tensor([[1, 0, 2], [1, 1, 2]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    batch = Batch(logits.new_zeros(2, 3).long(), targets, mask, torch.ones(2), [None, None])
    assert batch.reproduced(logits).tolist() == [True, False]  # example 1: position 1 predicts 2, not 1
    labels = LabelBatch(torch.zeros(2, 4), torch.tensor([1, 0]))
    assert labels.reproduced(torch.tensor([[0.0, 2.0], [0.0, 2.0]])).tolist() == [True, False]
    restricted = LabelBatch(torch.zeros(1, 4), torch.tensor([0]), allowed=torch.tensor([True, False]))
    assert restricted.reproduced(torch.tensor([[0.0, 2.0]])).tolist() == [True]  # class 1 is not allowed


@pytest.mark.parametrize("update", ["sparse", "full"])
def test_example_reproduced_is_a_plain_forward_before_the_step(update):
    model = tiny_mcsd(seed=3)
    learner = Learner(model, update=update, neuron_fraction=0.5, lr=3e-3)
    examples = [FACT, {"prompt": "Hi", "response": "Hello."}]
    batch = build_batch(model.tokenizer, examples, max_seq_len=learner.max_seq_len, pad_id=learner.pad_id,
                        device=model.device)
    for _ in range(3):
        with torch.no_grad():
            want = batch.reproduced(model(batch.inputs)).tolist()
        assert learner.step(examples).example_reproduced == want


def test_example_reproduced_is_the_greedy_reply():
    model = tiny_mcsd(seed=3)
    learner = Learner(model, update="full", lr=3e-3)
    session = ChatSession(model, None, max_new_tokens=24)
    flags, greedy = [], []
    for _ in range(80):
        session.reset()
        greedy.append(session.send(FACT["prompt"]).text.strip() == FACT["response"])
        flags.append(learner.step([FACT]).example_reproduced[0])  # measured before this step's update
        if flags[-1] and len(flags) > 3:
            break
    assert flags == greedy and not flags[0] and flags[-1]  # learned, and the flag saw each state


def test_attached_learner_rehearses_until_the_fact_is_reproduced(tmp_path):
    model = tiny_mcsd(seed=3)
    learner = Learner(model, update="full", lr=3e-3)
    with InteractionLog(tmp_path / "log.db") as log:
        session = ChatSession(model, log, max_new_tokens=24)
        rid = log.append(session_id="teacher", **FACT)
        # a low mean loss alone does not end the rehearsal: learned_loss is high enough to end it
        # after the first step, min_gain off; only reproduction (or the cap) ends it
        handle = learner.attach(session, batch_size=1, replay_ratio=0.0, new_repeats=200, learned_loss=50.0,
                                min_gain=None, until_reproduced=True, poll_s=0.01)
        try:
            for _ in range(600):
                if log.get(rid)["learned_at"] is not None:
                    break
                handle.wait_for_steps(handle.status()["steps"] + 1, 10)
        finally:
            status = handle.detach(60)
        assert log.get(rid)["learned_at"] is not None, status
        assert status["steps"] > 1, status  # learned_loss would have ended it after one step
        probe = ChatSession(model, None, max_new_tokens=24)
        assert probe.send(FACT["prompt"]).text.strip() == FACT["response"]
