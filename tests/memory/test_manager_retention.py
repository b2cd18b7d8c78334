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
