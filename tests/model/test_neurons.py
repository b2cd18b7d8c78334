"""Selectable-neuron MLP: real zeros, activation records, sparse path == dense reference."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from synclearn.model import MCSDConfig, NeuronTrace, SelectableMLP, SparseSpec, build_model, fit_predictor


def mlp64(rank=8):
    torch.manual_seed(0)
    return SelectableMLP(16, 64, rank).double()


def flops(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_activation_has_real_zeros():
    mlp = mlp64()
    trace = NeuronTrace()
    mlp(torch.randn(50, 16, dtype=torch.float64), trace=trace)
    frac_active = trace.active[0] / 50
    assert 0.2 < frac_active.mean() < 0.8  # about half fire at init, the rest are exactly zero


@pytest.mark.parametrize("mode", ["topk", "predictor"])
def test_sparse_path_with_every_neuron_equals_dense(mode):
    mlp = mlp64()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    dense = mlp(x)
    torch.testing.assert_close(mlp.sparse_forward(x, SparseSpec(64, mode)), dense, rtol=1e-12, atol=1e-12)


def test_topk_sparse_path_is_exact_when_k_covers_the_active_neurons():
    mlp = mlp64()
    x = torch.randn(20, 16, dtype=torch.float64)
    active = (mlp.up(x) > 0).sum(-1).max().item()
    torch.testing.assert_close(mlp(x, sparse=SparseSpec(int(active), "topk")), mlp(x), rtol=1e-12, atol=1e-12)


def test_sparse_path_does_fewer_flops():
    mlp = SelectableMLP(256, 1024, 32)
    x = torch.randn(1, 256)
    dense = flops(lambda: mlp(x))
    topk = flops(lambda: mlp(x, sparse=SparseSpec(64, "topk")))
    pred = flops(lambda: mlp(x, sparse=SparseSpec(64, "predictor")))
    assert topk < 0.6 * dense  # the down projection shrinks to k columns
    assert pred < 0.25 * dense  # predictor + k rows + k columns


def test_model_sparse_all_neurons_equals_dense_and_trace_records_every_layer():
    cfg = MCSDConfig(d_model=32, n_layers=3, n_channels=4, d_ff=64, predictor_rank=8)
    model = build_model(cfg, dtype=torch.float64)
    ids = torch.randint(0, 256, (2, 9))
    dense = model(ids)
    torch.testing.assert_close(model(ids, sparse=SparseSpec(64, "predictor")), dense, rtol=1e-10, atol=1e-10)
    state = model.init_state(2)
    for t in range(9):
        logits, state = model.step(ids[:, t], state, sparse=SparseSpec(64, "topk"))
        torch.testing.assert_close(logits, dense[:, t], rtol=1e-10, atol=1e-10)
    mask = torch.zeros(2, 9)
    mask[:, 5:] = 1
    trace = NeuronTrace(mask=mask)
    model(ids, trace=trace)
    assert sorted(trace.mass) == [0, 1, 2] and trace.tokens == 8
    assert all(m.shape == (64,) and (m >= 0).all() for m in trace.mass.values())
    assert all((a <= 8).all() for a in trace.active.values())


def test_trace_mask_counts_only_weighted_tokens():
    mlp = mlp64()
    x = torch.randn(1, 4, 16, dtype=torch.float64)
    full, half = NeuronTrace(), NeuronTrace(mask=torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    mlp(x, trace=full)
    mlp(x, trace=half)
    h = torch.relu(mlp.up(x[0, 2:])) ** 2
    torch.testing.assert_close(half.mass[0], h.sum(0).float())
    assert (half.mass[0] <= full.mass[0] + 1e-6).all()


def test_trace_with_sparse_path_is_refused():
    with pytest.raises(ValueError, match="dense path"):
        mlp64()(torch.randn(2, 16, dtype=torch.float64), sparse=SparseSpec(4), trace=NeuronTrace())


def test_predictor_learns_which_neurons_fire():
    torch.manual_seed(0)
    mlp = SelectableMLP(32, 256, 32)
    xs = torch.randn(2000, 32)
    k = 25
    true = mlp.up(xs).topk(k, -1).indices
    before = (true[:, :, None] == mlp.predictor(xs).topk(k, -1).indices[:, None, :]).any(-1).float().mean()
    up_before = mlp.up.weight.clone()
    recall = fit_predictor(mlp, xs, steps=300)
    assert recall > 0.9 and recall > before + 0.3
    assert torch.equal(up_before, mlp.up.weight)  # only the predictor trained


def test_bad_sparse_specs():
    with pytest.raises(ValueError, match="positive"):
        SparseSpec(0)
    with pytest.raises(ValueError, match="'topk' or 'predictor'"):
        SparseSpec(4, "magic")
    with pytest.raises(ValueError, match="predictor_rank"):
        SelectableMLP(8, 16, 0)(torch.randn(1, 8), sparse=SparseSpec(4, "predictor"))
