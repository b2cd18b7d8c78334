"""Teaching sticks by default: learner.attach(session) with no options rehearses a new turn until
it is learned, so a fact taught once in a chat is recalled afterwards."""

import time

import pytest

from synclearn.bench.chat_facts import CorrectingLog
from synclearn.chat import ChatSession
from synclearn.data.facts import Fact
from synclearn.eval.recall import probe_fact
from synclearn.learn import Learner
from synclearn.memory import InteractionLog
from synclearn.model import MCSDConfig, build_model
from synclearn.options import AttachOptions

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_fact_taught_once_in_chat_is_recalled_with_the_default_attach(tmp_path):
    model = build_model(MCSDConfig(d_model=32, n_layers=2, n_channels=4, d_ff=64, predictor_rank=0, chunk_size=16),
                        seed=0)
    fact = Fact("Kado", "pet", "a parrot")
    defaults = AttachOptions()
    assert defaults.new_repeats > 1 and defaults.learned_loss is not None  # rehearsal is the default
    with InteractionLog(tmp_path / "log.db") as log:
        learner = Learner(model, log, update="full", lr=3e-2, seed=0)
        front = CorrectingLog(log)  # the user's correction is logged with the turn, as the chat front end does
        session = ChatSession(model, front, max_new_tokens=16)
        prober = ChatSession(model, None, max_new_tokens=16)
        before = probe_fact(model, prober, fact, fact.question())
        handle = learner.attach(session)  # no options: the defaults
        try:
            front.expect(fact.question(), fact.answer())
            rid = session.send(fact.question()).interaction_id
            deadline = time.monotonic() + 120
            while log.get(rid)["learned_at"] is None and time.monotonic() < deadline:
                time.sleep(0.01)
            steps = handle.status()["steps"]
        finally:
            handle.detach()
        assert log.get(rid)["learned_at"] is not None and steps > 1  # one turn, several rehearsal steps
        assert steps <= defaults.new_repeats
        after = probe_fact(model, prober, fact, fact.question())
        # recalled: the taught value now ranks first among the attribute's values (a random tiny
        # model does not yet generate it byte for byte in a fresh conversation)
        assert not before.ranked and after.ranked and after.rank == 0
