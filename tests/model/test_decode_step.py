"""The fused inference decode step (decode_step.layers_step) equals the module path (MCSDBlock.step)."""

import copy

import pytest
import torch

from synclearn.model import MCSDConfig, SparseSpec, build_model, neuron_context
from synclearn.model.neurons import masked_dense_reference

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(dtype=torch.float64, seed=1, gated=False):
    cfg = MCSDConfig(d_model=32, n_layers=3, n_channels=4, d_ff=64, chunk_size=16, predictor_rank=8, gated_decay=gated)
    model = build_model(cfg, seed=seed, dtype=dtype)
    if gated:  # a gate away from its dt = 1 initialization
        with torch.no_grad():
            for block in model.blocks:
                block.mixer.gate.weight.normal_(0.0, 0.6, generator=torch.Generator().manual_seed(seed))
    return model


def decode(model, ids, sparse=None, module_path=False, start=4):
    """Logits of every decoded token and the final state; ``module_path``: under an (empty)
    neuron context, which sends every layer through its modules."""
    outs = []
    with torch.inference_mode():
        _, state = model.prefill(ids[:, :start])
        for t in range(start, ids.shape[1]):
            if module_path:
                with neuron_context():
                    logits, state = model.step(ids[:, t], state, sparse=sparse)
            else:
                logits, state = model.step(ids[:, t], state, sparse=sparse)
            outs.append(logits)
    return torch.stack(outs), state


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("gated", [False, True])
def test_fused_dense_step_equals_the_module_path(dtype, tol, batch, gated):
    model = tiny(dtype, gated=gated)
    ids = torch.randint(0, 263, (batch, 30), generator=torch.Generator().manual_seed(batch))
    a, sa = decode(model, ids)
    b, sb = decode(model, ids, module_path=True)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    for x, y in ((sa.slope, sb.slope), (sa.decay, sb.decay), (sa.z, sb.z)):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)
    assert torch.equal(sa.pos, sb.pos)


@pytest.mark.parametrize("k", [1, 6, 20, 63])
def test_fused_sparse_step_equals_the_masked_dense_reference(k):
    """Batch 1, predictor mode: the fused gather (index_select up rows, embedding_bag down rows)
    equals the dense MLP with the unchosen neurons masked, run through the module path."""
    model = tiny(seed=2)
    spec = SparseSpec(k, "predictor")
    ids = torch.randint(0, 263, (1, 24), generator=torch.Generator().manual_seed(k))
    masked = {i: (lambda x, m=m: masked_dense_reference(m, x, spec)) for i, m in enumerate(model.mlps)}
    a, sa = decode(model, ids, sparse=spec)
    with torch.inference_mode():
        _, ref = model.prefill(ids[:, :4])
        refs = []
        for t in range(4, ids.shape[1]):
            with neuron_context(overrides=masked):
                logits, ref = model.step(ids[:, t], ref)
            refs.append(logits)
    torch.testing.assert_close(a, torch.stack(refs), rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(sa.slope, ref.slope, rtol=1e-11, atol=1e-12)
    full, _ = decode(model, ids, sparse=SparseSpec(64, "predictor"))
    assert torch.equal(full, decode(model, ids)[0])  # k = d_ff is the dense step


def test_module_path_is_taken_where_the_fused_step_has_no_form():
    """Batch > 1 sparse, topk mode and a low-precision model decode through the modules and
    still agree with the masked reference / the fp32 result."""
    model = tiny(seed=3)
    ids = torch.randint(0, 263, (2, 12), generator=torch.Generator().manual_seed(0))
    for spec in (SparseSpec(10, "predictor"), SparseSpec(10, "topk")):
        masked = {i: (lambda x, m=m: masked_dense_reference(m, x, spec)) for i, m in enumerate(model.mlps)}
        a, _ = decode(model, ids, sparse=spec)
        with torch.inference_mode():
            _, ref = model.prefill(ids[:, :4])
            for t in range(4, 12):
                with neuron_context(overrides=masked):
                    b, ref = model.step(ids[:, t], ref)
        torch.testing.assert_close(a[-1], b, rtol=1e-11, atol=1e-12)
    bf = copy.deepcopy(model).to(torch.bfloat16)
    lo, _ = decode(bf, ids)
    torch.testing.assert_close(lo.double(), decode(model, ids)[0], rtol=0.1, atol=0.1)


def test_in_place_weight_changes_reach_the_next_step():
    """The fused step reads the parameters every step (no stale copies): a learner editing
    neuron rows in place is seen at once."""
    model = tiny(seed=4)
    ids = torch.randint(0, 263, (1, 10), generator=torch.Generator().manual_seed(1))
    before, _ = decode(model, ids)
    with torch.no_grad():
        model.mlps[0].down.weight.mul_(3.0)
    after, _ = decode(model, ids)
    ref, _ = decode(model, ids, module_path=True)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_compiled_decode_equals_eager_or_falls_back():
    """``compile_decode``: the same logits (float rounding aside); a machine without a working
    compiler warns once and decodes eagerly. A deep copy of the model decodes too."""
    model = tiny(torch.float32, seed=5)
    ids = torch.randint(0, 263, (1, 12), generator=torch.Generator().manual_seed(2))
    eager, _ = decode(model, ids)
    model.compile_decode()
    compiled, _ = decode(model, ids)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    twin = copy.deepcopy(model)
    torch.testing.assert_close(decode(twin, ids)[0], eager, rtol=1e-5, atol=1e-5)
    model.compile_decode(False)
    assert torch.equal(decode(model, ids)[0], eager)
