"""Pretraining the chat base with Fabric: trains once, caches under a key of the config, reuses."""

import json
import os

import pytest
import torch

from synclearn.learn import pretrain as P
from synclearn.model import load_model

TINY = dict(overrides={"d_model": 32, "n_layers": 2, "n_channels": 4, "d_ff": 64, "predictor_rank": 0,
                       "chunk_size": 16}, steps=3, batch_size=2, seq_len=32, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_key_is_a_stable_hash_of_the_config():
    a = P.PretrainConfig(**{k: v for k, v in TINY.items() if k != "progress"})
    assert a.key() == P.PretrainConfig(**{k: v for k, v in TINY.items() if k != "progress"}).key()
    for change in ({"steps": 4}, {"lr": 1e-3}, {"precision": "bf16-mixed"}, {"overrides": {"d_model": 64}},
                   {"seed": 1}, {"fact_share": 0.5}):
        settings = {**{k: v for k, v in TINY.items() if k != "progress"}, **change}
        assert P.PretrainConfig(**settings).key() != a.key(), change


def test_invalid_config_names_every_problem():
    with pytest.raises(ValueError) as err:
        P.PretrainConfig(name="mcsd-huge", steps=0, precision="8-bit", strategy="deepspeed")
    for word in ("mcsd-huge", "steps=0", "precision='8-bit'", "strategy='deepspeed'"):
        assert word in str(err.value)
    with pytest.raises(ValueError, match="n_channels"):
        P.PretrainConfig(overrides={"d_model": 30, "n_channels": 4})


def test_trains_once_then_loads_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNCLEARN_CACHE", str(tmp_path / "env-cache"))
    model = P.pretrained_model("mcsd-chat", **TINY)
    info = model.pretrain_info
    path = tmp_path / "env-cache" / "pretrained" / info["key"]
    assert info["trained_now"] and info["path"] == str(path)
    assert {"config.json", "model.safetensors", "fabric.ckpt", "pretrain.json"} <= {p.name for p in path.iterdir()}
    assert info["parameters"] == model.num_parameters() and len(info["losses"]) == 3
    meta = path / "pretrain.json"
    stamp = (meta.stat().st_ino, meta.stat().st_mtime_ns, (path / "model.safetensors").stat().st_mtime_ns)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached config was trained again")

    monkeypatch.setattr(P, "pretrain", no_training)
    again = P.pretrained_model("mcsd-chat", **TINY)
    assert not again.pretrain_info["trained_now"]
    assert stamp == (meta.stat().st_ino, meta.stat().st_mtime_ns, (path / "model.safetensors").stat().st_mtime_ns)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
    # the cached entry is a plain synclearn checkpoint, and the weights are the Fabric checkpoint's
    fabric_state = torch.load(path / "fabric.ckpt", weights_only=True)["model"]
    plain = load_model(path)
    for name, p in plain.state_dict().items():
        assert torch.equal(p, fabric_state[name]), name
    # an explicit cache_dir wins over the environment: nothing cached there yet, so it would train
    with pytest.raises(AssertionError, match="trained again"):
        P.pretrained_model("mcsd-chat", cache_dir=str(tmp_path / "other"), **TINY)


def test_training_lowers_the_loss_and_is_deterministic(tmp_path):
    settings = {**TINY, "steps": 12, "lr": 1e-2}
    a = P.pretrained_model(cache_dir=str(tmp_path / "a"), **settings)
    b = P.pretrained_model(cache_dir=str(tmp_path / "b"), **settings)
    assert a.pretrain_info["last_loss"] < a.pretrain_info["first_loss"]
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


def test_unfinished_entry_is_trained_again(tmp_path):
    config = P.PretrainConfig(**{k: v for k, v in TINY.items() if k != "progress"})
    path = P.cache_root(tmp_path) / config.key()
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")  # a crash before pretrain.json was written
    got, trained = P.ensure_pretrained(config, cache_dir=tmp_path, progress=False)
    assert trained and got == path and json.loads((path / "pretrain.json").read_text())["key"] == config.key()
    assert not any(p.name.startswith(".") and "tmp" in p.name for p in path.parent.iterdir())


def test_cli_takes_hydra_overrides(tmp_path, capsys):
    args = [f"model.cache_dir={tmp_path}", "model.steps=2", "model.batch_size=2", "model.seq_len=32",
            "progress=false", "model.overrides={d_model: 32, n_layers: 1, d_ff: 64, predictor_rank: 0}"]
    assert P.cli_main(args) == 0
    assert "trained:" in capsys.readouterr().out
    assert P.cli_main(args) == 0
    assert "cached:" in capsys.readouterr().out
    assert len([p for p in (tmp_path / "pretrained").iterdir() if not p.name.startswith(".")]) == 1
    assert os.path.isfile(next((tmp_path / "pretrained").glob("*/pretrain.json")))


# -- model names: one meaning each ---------------------------------------------------------------


def test_random_names_and_their_bare_aliases():
    a, b = load_model("mcsd-tiny-random", seed=3), load_model("mcsd-tiny", seed=3)
    assert a.name == b.name == "mcsd-tiny-random"
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)
    chat_shape = load_model("mcsd-chat-random", seed=0)
    assert chat_shape.name == "mcsd-chat-random" and not hasattr(chat_shape, "pretrain_info")
    assert chat_shape.config.d_model == P.PretrainConfig().model_config().d_model
    with pytest.raises(FileNotFoundError) as err:
        load_model("mcsd-huge")
    assert "mcsd-huge" in str(err.value) and "mcsd-chat" in str(err.value) and "mcsd-tiny-random" in str(err.value)


def test_load_model_mcsd_chat_is_the_pretrained_base_hydra_means(tmp_path, monkeypatch, capfd):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from synclearn.run import CONF_DIR

    monkeypatch.setenv("SYNCLEARN_CACHE", str(tmp_path))
    # a custom pretraining through load_model: trained now, saying so on one line, with a short name
    small = {k: v for k, v in TINY.items() if k != "progress"}
    custom = load_model("mcsd-chat", progress=False, **small)
    assert custom.pretrain_info["trained_now"]
    assert custom.name == custom.pretrain_info["name"] == f"mcsd-chat-pretrained-{custom.pretrain_info['key']}"
    assert "is not in the cache yet: pretraining it now" in capfd.readouterr().err
    with pytest.raises(ValueError, match="d_model"):
        load_model("mcsd-chat", d_model=64)  # shape changes of a pretrained base go through overrides=

    # Hydra's `model: mcsd-chat` and load_model("mcsd-chat") name the same cache entry
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=["progress=false"])
    default = P.PretrainConfig(**P.PRETRAINED_NAMES["mcsd-chat"])
    entry = P.cache_root() / default.key()
    # fill that entry from the tiny run (pretraining the real base here would take minutes)
    import shutil

    shutil.copytree(custom.pretrain_info["path"], entry)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached base was trained again")

    monkeypatch.setattr(P, "pretrain", no_training)
    base = load_model("mcsd-chat")
    hydra_base = instantiate(cfg.model)
    assert base.name == hydra_base.name == "mcsd-chat"
    assert base.pretrain_info["path"] == hydra_base.pretrain_info["path"] == str(entry)
    assert not base.pretrain_info["trained_now"]
    for x, y, z in zip(base.parameters(), hydra_base.parameters(), custom.parameters()):
        assert torch.equal(x, y) and torch.equal(x, z)
