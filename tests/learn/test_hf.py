"""In-place learning on a local Hugging Face Llama (tiny, random, nothing downloaded)."""

import torch

from synclearn.learn import Learner
from synclearn.model import load_model

from .conftest import snapshot


def test_hf_model_decodes_with_its_kv_cache(llama_dir):
    model = load_model(llama_dir)
    ids = torch.randint(0, 256, (2, 12))
    full = model(ids)
    logits, state = model.prefill(ids[:, :7])
    for t in range(7, 12):
        step_logits, state = model.step(ids[:, t], state)
        torch.testing.assert_close(step_logits, full[:, t], rtol=1e-4, atol=1e-4)
    assert state.nbytes() > 0 and state.pos.tolist() == [12, 12]
    assert len(model.generate("hi", max_new_tokens=4).ids) <= 4


def test_sparse_learning_in_place_on_llama_mlp(llama_dir, examples):
    model = load_model(llama_dir)
    learner = Learner(model, update="sparse", neuron_fraction=0.1, plastic_layers=1)
    before = snapshot(model)
    losses = [learner.step(examples).loss for _ in range(12)]
    assert losses[-1] < losses[0]
    touched = set()
    r = learner.step(examples)
    touched = set(r.neurons[1])
    after = snapshot(model)
    for name in before:
        if "layers.1.mlp" in name:
            continue
        assert torch.equal(before[name], after[name]), name
    mlp = model.mlps[1]
    assert len(touched) <= learner.budget[1]
    # neuron i = row i of gate and up, column i of down: the layout the learner wrote through
    layout = model.neuron_layouts()[1]
    assert layout.in_weights[0] is mlp.gate_proj.weight and layout.out_weight is mlp.down_proj.weight


def test_lora_on_hf_model(llama_dir, examples):
    model = load_model(llama_dir)
    learner = Learner(model, update="lora", lora_rank=4)
    base = {n: p.clone() for n, p in model.named_parameters() if "lora_" not in n}
    losses = [learner.step(examples).loss for _ in range(10)]
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n
