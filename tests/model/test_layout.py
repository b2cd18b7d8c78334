"""Neuron-major storage of the selectable MLP: same function, old checkpoints load, LoRA attaches."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_model as st_save_model

from synclearn.model import MCSDConfig, build_model, load_model, save_model


def tiny(dtype=torch.float64):
    cfg = MCSDConfig(d_model=32, n_layers=2, n_channels=4, d_ff=64, chunk_size=16, predictor_rank=8)
    return build_model(cfg, seed=2, dtype=dtype)


def test_each_neurons_rows_are_contiguous_and_the_layout_views_them():
    model = tiny()
    for mlp in model.mlps:
        up, down_rows = mlp.neuron_rows()
        assert up.is_contiguous() and down_rows.is_contiguous() and down_rows.shape == up.shape
        assert down_rows.data_ptr() == mlp.down.weight.data_ptr()
        assert mlp.layout().out_rows.data_ptr() == mlp.down.weight.data_ptr()
    cast = tiny().to(torch.bfloat16)
    assert cast.mlps[0].down.weight.t().is_contiguous()  # a dtype cast keeps the layout


def test_dense_output_equals_the_previous_layout():
    """The previous layout: plain nn.Linear weights, down [D, d_ff] row-major."""
    model = tiny()
    x = torch.randn(3, 7, 32, dtype=torch.float64)
    for mlp in model.mlps:
        up = mlp.up.weight.detach().clone().contiguous()
        down = mlp.down.weight.detach().clone().contiguous()  # [D, d_ff] row-major, as before
        ref = F.linear(F.relu(F.linear(x, up)).square(), down)
        torch.testing.assert_close(mlp(x), ref, rtol=1e-12, atol=1e-14)


def test_version_1_checkpoints_load_and_version_2_stores_neurons_row_major(tmp_path):
    model = tiny(torch.float32)
    old = tmp_path / "v1"
    old.mkdir()
    st_save_model(model, str(old / "model.safetensors"))  # how format 1 was written
    (old / "config.json").write_text(json.dumps({"model_type": "mcsd", **model.config.to_dict(), "dtype": "float32"}))
    loaded = load_model(old)
    ids = torch.randint(0, 263, (2, 20))
    assert torch.equal(loaded(ids), model(ids))
    assert loaded.mlps[1].down.weight.t().is_contiguous()

    save_model(loaded, tmp_path / "v2")
    assert json.loads((tmp_path / "v2" / "config.json").read_text())["format_version"] == 2
    with safe_open(str(tmp_path / "v2" / "model.safetensors"), "pt") as f:
        assert tuple(f.get_slice("blocks.0.mlp.down.weight").get_shape()) == (64, 32)
    again = load_model(tmp_path / "v2")
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_unknown_format_version_is_a_clear_error(tmp_path):
    save_model(tiny(torch.float32), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "format_version": 9}))
    with pytest.raises(ValueError, match="format_version=9"):
        load_model(tmp_path / "m")


def test_peft_lora_attaches_to_the_neuron_major_mlp():
    peft = pytest.importorskip("peft")
    model = tiny()
    ids = torch.randint(0, 263, (2, 12))
    base = model(ids).detach()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=list(model.lora_targets)))
    torch.testing.assert_close(lora(ids), base, rtol=1e-12, atol=1e-12)  # B = 0 at init
    lora(ids).square().mean().backward()
    grads = [p.grad for n, p in lora.named_parameters() if "lora_A" in n and ".mlp.down." in n]
    assert grads and all(g is not None for g in grads)
