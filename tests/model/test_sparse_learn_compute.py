"""The sparse step's compute (trace_pass + resumed_forward) is bitwise today's step."""

import pytest
import torch

from synclearn.learn.select import SELECTORS
from synclearn.learn.sparse import gather_slice, plastic_forward, resumed_forward, trace_pass
from synclearn.model import MCSDConfig, NeuronTrace, build_model, neuron_context

pytestmark = pytest.mark.usefixtures("one_thread")


def step_core(model, ids, mask, layers, fast):
    """Selection, the loss through the gathered leaves and their gradients, as the sparse
    update does it: the previous way (two whole forwards) or through trace_pass."""
    trace = NeuronTrace(mask=mask)
    if fast:
        traced = trace_pass(model, ids, trace, layers)
    else:
        with torch.no_grad(), neuron_context(trace=trace):
            model(ids)
    fn, source = SELECTORS["topk"]
    gen = torch.Generator().manual_seed(0)
    chosen = {l: fn(getattr(trace, source)[l], 6, locked=None, exploration=0.0, generator=gen) for l in layers}
    layouts = model.neuron_layouts()
    slices = {l: gather_slice(layouts[l], l, idx) for l, idx in chosen.items()}
    overrides = {l: (lambda x, lo=layouts[l], sl=sl: plastic_forward(x, lo, sl)) for l, sl in slices.items()}
    with neuron_context(overrides=overrides):
        logits = resumed_forward(model, ids, traced) if fast else model(ids)
    loss = (logits.log_softmax(-1)[..., 0] * mask).sum()
    grads = torch.autograd.grad(loss, [t for sl in slices.values() for t in sl.leaves])
    return chosen, {l: getattr(trace, source)[l] for l in layers}, loss, grads


@pytest.mark.parametrize("layers", [[2, 3], [1, 3], [0, 1, 2, 3]])
def test_trace_pass_and_resumed_forward_are_bitwise_the_previous_step(layers):
    cfg = MCSDConfig(d_model=32, n_layers=4, n_channels=4, d_ff=64, chunk_size=16, predictor_rank=8)
    model = build_model(cfg, seed=7)
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(0, 263, (3, 40), generator=torch.Generator().manual_seed(1))
    mask = (torch.rand(3, 40, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    old = step_core(model, ids, mask, layers, fast=False)
    new = step_core(model, ids, mask, layers, fast=True)
    for l in layers:
        assert torch.equal(old[0][l], new[0][l]) and torch.equal(old[1][l], new[1][l])
    assert torch.equal(old[2], new[2])
    assert all(torch.equal(a, b) for a, b in zip(old[3], new[3]))


def test_trace_pass_records_only_the_plastic_layers():
    cfg = MCSDConfig(d_model=32, n_layers=4, n_channels=4, d_ff=64, chunk_size=16, predictor_rank=8)
    model = build_model(cfg, seed=7)
    traced = trace_pass(model, torch.randint(0, 263, (1, 9)), NeuronTrace(), [1, 2])
    assert set(traced.trace.mass) == {1, 2} and traced.start == 1 and traced.stream.shape == (1, 9, 32)
