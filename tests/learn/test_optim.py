"""RowSparseAdamW against torch.optim.AdamW (the reference), LRU bound, save/load."""

import pytest
import torch

from synclearn.learn import RowSparseAdamW


def test_matches_torch_adamw_on_the_touched_rows():
    torch.manual_seed(0)
    weight = torch.randn(20, 6, dtype=torch.float64)
    ref = weight.clone().requires_grad_(True)
    ref_opt = torch.optim.AdamW([ref], lr=0.01, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1)
    opt = RowSparseAdamW(lr=0.01, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1, capacity=20)
    rows = torch.tensor([1, 4, 7])
    for _ in range(5):  # the same rows every step: AdamW's per-parameter state matches exactly
        g = torch.randn(20, 6, dtype=torch.float64)
        g[[i for i in range(20) if i not in rows.tolist()]] = 0
        plan = opt.plan(0, rows, weight[rows], g[rows])
        opt.commit(plan)
        weight[rows] = plan.new_params
        ref.grad = g.clone()
        ref_opt.step()
    torch.testing.assert_close(weight[rows], ref.detach()[rows], rtol=1e-12, atol=1e-12)


def test_per_row_step_counts_give_per_row_bias_correction():
    opt = RowSparseAdamW(lr=0.1, capacity=4)
    p = torch.zeros(2, 3)
    opt.commit(opt.plan(0, torch.tensor([0]), p[:1], torch.ones(1, 3)))
    plan = opt.plan(0, torch.tensor([0, 1]), p, torch.ones(2, 3))
    assert plan.t.tolist() == [2, 1]
    # a fresh row's first AdamW step moves by lr * sign(g) (bias-corrected), whatever came before
    torch.testing.assert_close(plan.new_params[1], torch.full((3,), -0.1), rtol=1e-5, atol=1e-6)


def test_lru_eviction_keeps_the_table_bounded():
    opt = RowSparseAdamW(capacity=3)
    for n in [0, 1, 2]:
        opt.commit(opt.plan(0, torch.tensor([n]), torch.zeros(1, 2), torch.ones(1, 2)))
    opt.commit(opt.plan(0, torch.tensor([0]), torch.zeros(1, 2), torch.ones(1, 2)))  # 0 is recent again
    opt.commit(opt.plan(0, torch.tensor([5]), torch.zeros(1, 2), torch.ones(1, 2)))  # evicts 1 (least recent)
    assert opt.tracked(0) == [2, 0, 5]
    assert opt.state_bytes() == 3 * 2 * 4 * 2 + 3 * 8
    with pytest.raises(ValueError, match="exceed the optimizer capacity"):
        opt.plan(0, torch.arange(4), torch.zeros(4, 2), torch.ones(4, 2))


def test_plan_changes_nothing_until_commit():
    opt = RowSparseAdamW(capacity=4)
    opt.commit(opt.plan(0, torch.tensor([1]), torch.zeros(1, 2), torch.ones(1, 2)))
    before = opt.state_dict()
    opt.plan(0, torch.tensor([1, 2]), torch.zeros(2, 2), torch.ones(2, 2))
    after = opt.state_dict()
    assert all(torch.equal(before["layers"][0][k], after["layers"][0][k]) for k in ("neurons", "m", "v", "t"))


def test_state_round_trip():
    opt = RowSparseAdamW(lr=0.05, capacity=5)
    for n in ([0, 3], [3, 4], [1]):
        idx = torch.tensor(n)
        opt.commit(opt.plan(2, idx, torch.randn(len(n), 4), torch.randn(len(n), 4)))
    copy = RowSparseAdamW()
    copy.load_state_dict(opt.state_dict())
    assert copy.lr == 0.05 and copy.capacity == 5 and copy.tracked(2) == opt.tracked(2)
    g = torch.randn(2, 4)
    a = opt.plan(2, torch.tensor([3, 9]), torch.ones(2, 4), g)
    b = copy.plan(2, torch.tensor([3, 9]), torch.ones(2, 4), g)
    assert torch.equal(a.new_params, b.new_params)


def test_bad_settings():
    with pytest.raises(ValueError) as err:
        RowSparseAdamW(lr=0, betas=(1.0, 0.9), capacity=0)
    assert "lr=0" in str(err.value) and "betas" in str(err.value) and "capacity=0" in str(err.value)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_row_sparse_sgd_matches_torch_sgd_on_the_selected_rows(weight_decay):
    from synclearn.learn.optim import RowSparseSGD

    torch.manual_seed(0)
    weight = torch.randn(20, 6)
    ref = weight.clone().requires_grad_(True)
    ref_opt = torch.optim.SGD([ref], lr=0.05, weight_decay=weight_decay, foreach=False)
    opt = RowSparseSGD(lr=0.05, weight_decay=weight_decay)
    rows = torch.tensor([2, 3, 11])
    others = [i for i in range(20) if i not in rows.tolist()]
    for _ in range(4):
        g = torch.randn(20, 6)
        plan = opt.plan(0, rows, weight[rows], g[rows])
        assert opt.snapshot(plan) == {}  # no state: nothing to undo but the rows
        opt.commit(plan)
        weight[rows] = plan.new_params
        ref.grad = g.clone()
        ref.grad[others] = 0  # the reference steps only the selected rows (weight decay too)
        saved = ref.detach()[others].clone()
        ref_opt.step()
        with torch.no_grad():
            ref[others] = saved
    assert torch.equal(weight[rows], ref.detach()[rows])  # bitwise: the same arithmetic
    assert opt.state_bytes() == 0 and opt.state_dict()["layers"] == {}
    with pytest.raises(ValueError, match="lr=0"):
        RowSparseSGD(lr=0)
