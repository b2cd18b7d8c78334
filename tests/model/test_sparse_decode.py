"""Sparse decode: the gathered-bundle path equals the dense MLP with the other neurons masked."""

import pytest
import torch

from synclearn.chat.session import ChatSession
from synclearn.model import MCSDConfig, SelectableMLP, SparseSpec, build_model, fit_predictors, neuron_context
from synclearn.model.neurons import masked_dense_reference

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp64(seed=0):
    torch.manual_seed(seed)
    return SelectableMLP(16, 64, predictor_rank=8).double()


@pytest.mark.parametrize("mode", ["topk", "predictor"])
@pytest.mark.parametrize("n_tokens", [1, 7])
def test_partial_k_equals_the_masked_dense_reference(mode, n_tokens):
    mlp = mlp64()
    x = torch.randn(n_tokens, 16, dtype=torch.float64)
    for k in (1, 6, 32, 63):
        spec = SparseSpec(k, mode)
        torch.testing.assert_close(mlp.sparse_forward(x, spec), masked_dense_reference(mlp, x, spec), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("mode", ["topk", "predictor"])
def test_all_neurons_equal_dense(mode):
    mlp = mlp64(1)
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(mlp.sparse_forward(x, SparseSpec(64, mode)), mlp(x), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(mlp(x, sparse=SparseSpec(64, mode)), mlp(x), rtol=0, atol=0)  # k = d_ff: the dense path


def test_sparse_model_decode_equals_masked_dense_decode():
    """Whole-model decode with k of d_ff neurons equals the dense model whose MLPs mask the
    unselected neurons (the reference runs through the layers' override hook)."""
    cfg = MCSDConfig(d_model=32, n_layers=2, n_channels=4, d_ff=64, chunk_size=16, predictor_rank=8)
    model = build_model(cfg, seed=3, dtype=torch.float64)
    ids = torch.randint(0, 263, (1, 12))
    spec = SparseSpec(10, "predictor")
    masked = {i: (lambda x, m=m: masked_dense_reference(m, x, spec)) for i, m in enumerate(model.mlps)}
    with torch.inference_mode():
        _, state = model.prefill(ids[:, :4])
        ref_state = state
        for t in range(4, 12):
            a, state = model.step(ids[:, t], state, sparse=spec)
            with neuron_context(overrides=masked):
                b, ref_state = model.step(ids[:, t], ref_state)
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
        full, _ = model.step(ids[:, 0], state, sparse=SparseSpec(64, "predictor"))
        dense, _ = model.step(ids[:, 0], state)
    assert torch.equal(full, dense)


def test_fit_predictors_trains_every_layer_and_only_predictors():
    cfg = MCSDConfig(d_model=32, n_layers=2, n_channels=4, d_ff=64, chunk_size=16, predictor_rank=8)
    model = build_model(cfg, seed=4)
    before = {n: p.clone() for n, p in model.named_parameters() if ".predictor." not in n}
    recall = fit_predictors(model, [torch.randint(0, 263, (4, 32), generator=torch.Generator().manual_seed(i)) for i in range(2)], steps=80)
    assert set(recall) == {0, 1} and all(0.0 <= r <= 1.0 for r in recall.values())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_chat_session_decodes_sparse_and_says_so_in_the_reply():
    model = build_model(MCSDConfig(d_model=32, n_layers=2, n_channels=4, d_ff=64, chunk_size=16, predictor_rank=8), seed=5)
    reply = ChatSession(model, sparse=SparseSpec(16, "predictor"), max_new_tokens=5).send("hi")
    assert reply.sparse == "predictor k=16/64" and reply.completion_tokens <= 5
    assert ChatSession(model, max_new_tokens=3).send("hi").sparse is None


def test_sparse_decode_refuses_adapted_weights():
    peft = pytest.importorskip("peft")
    model = build_model(MCSDConfig(d_model=32, n_layers=1, n_channels=4, d_ff=64, chunk_size=16, predictor_rank=8), seed=6)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=list(model.lora_targets)))
    with pytest.raises(ValueError, match="merge adapters"):
        lora.base_model.model.step(torch.tensor([1]), model.init_state(1), sparse=SparseSpec(8, "predictor"))
