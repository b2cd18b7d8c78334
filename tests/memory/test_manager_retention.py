"""Base-retention metrics (synclearn.eval.retention) on a model known to forget and one that cannot."""

import pytest

from synclearn.eval.retention import RetentionProbe, compare, heldout_text, text_nll, well_formed
from synclearn.learn import Learner
from synclearn.model import MCSDConfig, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny():
    return build_model(MCSDConfig(d_model=32, n_layers=2, n_channels=4, d_ff=64, predictor_rank=0, chunk_size=16),
                       seed=0)


def test_retention_sees_forgetting_and_nothing_when_nothing_can_change():
    probe = RetentionProbe(n_people=6, n_chat=6, text_bytes=2048, max_new_tokens=8)
    item = [{"prompt": "Say it", "response": "zq zq zq zq zq"}]
    changes = {}
    for lr in (3e-2, 0.0):
        model = tiny()
        before = probe.measure(model)
        learner = Learner(model, update="full", lr=3e-2, seed=0)
        learner.set_lr(lr)  # lr = 0: the weights cannot move
        for _ in range(20):
            learner.step(item)
        changes[lr] = compare(before, probe.measure(model))
    forgot, kept = changes[3e-2], changes[0.0]
    assert kept["text_nll_change"] == 0.0 and kept["chat_nll_change"] == 0.0 and kept["locality"] == 1.0
    assert forgot["text_nll_change"] > 0.2 and forgot["chat_nll_change"] > 0.2  # one item, high lr: it forgets
    assert forgot["text_nll_after"] > forgot["text_nll_before"]


def test_held_out_text_and_answer_format():
    text = heldout_text(1000)
    assert 900 <= len(text) <= 1000 and text.isascii()
    assert text == heldout_text(1000)  # fixed
    assert text_nll(tiny(), text, seq_len=64) > 0
    assert well_formed("It's a parrot.", "pet") and well_formed(" It's red. ", "favorite color")
    assert not well_formed("It's a tailor.", "pet") and not well_formed("a parrot", "pet")
    a, b = RetentionProbe(seed=1, n_people=4, n_chat=4), RetentionProbe(seed=1, n_people=4, n_chat=4)
    assert a.questions == b.questions and a.chat == b.chat  # same seed, same probes
    assert not {q for _, q in RetentionProbe(seed=1, n_people=4, exclude_names={"Kado"}).questions if "Kado" in q}


def test_untaught_entropy_sees_a_value_leak_to_everyone():
    """Teaching one value about a few people of every attribute collapses the answer distribution
    about people nobody taught (the leak that raises the people half of the chat NLL)."""
    from synclearn.data.facts import ATTRIBUTES, Fact

    probe = RetentionProbe(n_people=8, n_chat=4, text_bytes=512, max_new_tokens=8)
    items = [{"prompt": Fact(name, attr, values[0]).question(), "response": Fact(name, attr, values[0]).answer()}
             for attr, values in ATTRIBUTES.items() for name in ("Kado", "Bimo")]
    model = tiny()
    before = probe.measure(model)
    assert set(before) >= {"smalltalk_nll", "people_nll", "untaught_entropy"}
    learner = Learner(model, update="full", lr=1e-2, seed=0)
    for _ in range(30):
        learner.step(items)
    change = compare(before, probe.measure(model))
    assert change["untaught_entropy_vs_base"] < 0.5 < before["untaught_entropy"]
    halves = sorted((before["smalltalk_nll"], before["people_nll"]))
    assert halves[0] <= before["chat_nll"] <= halves[1]  # the chat NLL is their token-weighted mean
    unchanged = compare(before, before)
    assert unchanged["untaught_entropy_vs_base"] == 1.0 and unchanged["people_nll_change"] == 0.0
