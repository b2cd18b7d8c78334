"""The sparse step's compute in its three forms is bitwise one result.

* the reference: a whole dense forward to select, then a whole forward through the leaves;
* two passes: :func:`trace_pass` (stops after the plastic layers) + :func:`resumed_forward`
  (starts at the lowest plastic layer) -- what selectors that read the predictor use;
* one pass: :func:`selecting_forward`, each plastic layer choosing from its own activations --
  what the sparse learner runs by default

(:func:`synclearn.learn.sparse.step_forward` runs each).

Same neurons chosen, same activation scores, same loss, same gradients (``torch.equal``), and the
loss is the dense model's own.
"""

import pytest
import torch

from synclearn.learn import Learner
from synclearn.learn.select import SELECTORS
import synclearn.learn.sparse as sparse
from synclearn.learn.sparse import step_forward, trace_pass
from synclearn.model import MCSDConfig, NeuronTrace, build_model
from synclearn.model.hf import load_hf_model

pytestmark = pytest.mark.usefixtures("one_thread")

FORMS = ("reference", "two_pass", "one_pass")


def step_core(model, ids, mask, layers, form, budget=6):
    """Selection, the loss through the gathered leaves and their gradients, in one ``form``."""
    trace = NeuronTrace(mask=mask)
    fn, source = SELECTORS["topk"]
    gen = torch.Generator().manual_seed(0)
    choose = lambda l: fn(getattr(trace, source)[l], budget, locked=None, exploration=0.2, generator=gen)  # noqa: E731
    logits, slices = step_forward(model, ids, trace, layers, choose, form)
    loss = (logits.log_softmax(-1)[..., 0] * mask).sum()
    grads = torch.autograd.grad(loss, [t for sl in slices.values() for t in sl.leaves])
    return {l: sl.idx for l, sl in slices.items()}, {l: trace.mass[l] for l in layers}, loss, grads


def assert_one_result(model, ids, mask, layers):
    results = {form: step_core(model, ids, mask, layers, form) for form in FORMS}
    ref = results["reference"]
    for form in FORMS[1:]:
        got = results[form]
        assert got[0].keys() == ref[0].keys()
        for l in layers:
            assert torch.equal(got[0][l], ref[0][l]), (form, l)
            assert torch.equal(got[1][l], ref[1][l]), (form, l)
        assert torch.equal(got[2], ref[2]), form
        assert len(got[3]) == len(ref[3]) and all(torch.equal(a, b) for a, b in zip(got[3], ref[3])), form
    with torch.no_grad():
        dense = model(ids)
    assert torch.equal(ref[2], (dense.log_softmax(-1)[..., 0] * mask).sum())  # the served model's loss


@pytest.mark.parametrize("layers", [[2, 3], [1, 3], [0, 1, 2, 3], [3, 1]])
def test_the_three_forms_of_the_step_are_bitwise_one_result_mcsd(layers):
    cfg = MCSDConfig(d_model=32, n_layers=4, n_channels=4, d_ff=64, chunk_size=16, predictor_rank=8)
    model = build_model(cfg, seed=7)
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(0, 263, (3, 40), generator=torch.Generator().manual_seed(1))
    mask = (torch.rand(3, 40, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    assert_one_result(model, ids, mask, layers)


def test_the_three_forms_of_the_step_are_bitwise_one_result_hf_llama(llama_dir):
    model = load_hf_model(llama_dir)
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(0, 264, (2, 24), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 24)
    assert_one_result(model, ids, mask, [0, 1])


def test_trace_pass_records_only_the_plastic_layers():
    cfg = MCSDConfig(d_model=32, n_layers=4, n_channels=4, d_ff=64, chunk_size=16, predictor_rank=8)
    model = build_model(cfg, seed=7)
    traced = trace_pass(model, torch.randint(0, 263, (1, 9)), NeuronTrace(), [1, 2])
    assert set(traced.trace.mass) == {1, 2} and traced.start == 1 and traced.stream.shape == (1, 9, 32)


def test_the_learner_selects_in_one_pass_unless_its_selector_reads_the_predictor(monkeypatch):
    """The learner's own step runs one forward for topk and a selection pass first for the
    predictor selector (whose scores come from the predictors, not the activations)."""
    calls = []
    monkeypatch.setattr(sparse, "trace_pass", lambda *a, **k: calls.append("trace_pass") or trace_pass(*a, **k))
    cfg = MCSDConfig(d_model=32, n_layers=3, n_channels=4, d_ff=64, chunk_size=16, predictor_rank=8)
    examples = [{"prompt": "Where does Ana live?", "response": "It's Oslo."}] * 2
    for selector, passes in (("topk", []), ("predictor", ["trace_pass"])):
        calls.clear()
        result = Learner(build_model(cfg, seed=1), update="sparse", neuron_fraction=0.1, plastic_layers=2,
                         selector=selector, seed=0).step(examples)
        assert not result.skipped and result.touched and calls == passes, selector
