"""Checkpoints and ``load_model``: one directory = ``config.json`` + ``model.safetensors``.

``load_model`` accepts a pretrained name (``"mcsd-chat"``: the cached chat base of
:mod:`synclearn.learn.pretrain`, pretrained on first use), a random initialization
(``"mcsd-tiny-random"``, ``"mcsd-small-random"``, ``"mcsd-chat-random"``, ``"mcsd-1b-random"``,
``"mcsd-1.6b-random"``, ``"mcsd-3b-random"``: freshly initialized from ``seed``; the bare size names
``"mcsd-tiny"``, ``"mcsd-small"``, ... other than the pretrained ones stay accepted as aliases), a
directory written by :func:`save_model`, or a local Hugging Face causal-LM directory
(``config.json`` with a ``model_type`` other than ``"mcsd"``), which is wrapped by
:mod:`synclearn.model.hf`. Nothing is ever downloaded. A model from a name gets ``model.name``,
its short name (``"mcsd-chat"``, ``"mcsd-tiny-random"``) for banners and served ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save_file as st_save_file

from synclearn.durable import atomic_write, fsync_dir  # noqa: F401 (the one atomic-write helper; re-exported)
from synclearn.model.config import NAMED_CONFIGS, MCSDConfig, named_config
from synclearn.model.mcsd import MCSDLM

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
FORMAT_VERSION = 2
_NEURON_MAJOR = ".mlp.down.weight"  # stored as [d_ff, D] from format 2 on
RANDOM_SUFFIX = "-random"  # "<size>-random": a fresh initialization of a named size


def build_model(config: MCSDConfig, *, seed: int = 0, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> MCSDLM:
    """A freshly initialized MCSDLM; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MCSDLM(config)
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()


def save_model(model: MCSDLM, path: str | os.PathLike) -> Path:
    """Write ``model`` to directory ``path`` atomically (temp dir + rename per file)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "mcsd", "format_version": FORMAT_VERSION, **model.config.to_dict(),
              "dtype": str(model.dtype).removeprefix("torch.")}
    tensors = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue  # the tied head is the embedding
        t = t.detach()
        tensors[name] = (t.t() if name.endswith(_NEURON_MAJOR) else t).contiguous()
    atomic_write(path / WEIGHTS_FILE, lambda tmp: st_save_file(tensors, tmp))
    atomic_write(path / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))
    return path


def load_model(
    name_or_path: str | os.PathLike,
    *,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    **overrides: Any,
):
    """Load a model by name, from a synclearn checkpoint, or from a local HF directory.

    Args:
        name_or_path: a pretrained name (``"mcsd-chat"``), a random initialization
            (``"<size>-random"``, or the bare size as its alias) or a directory.
        seed: initialization seed for random initializations (a pretrained base is shared by
            every seed: its own pretraining seed is a setting, ``load_model("mcsd-chat", seed=...)``
            does not change it).
        dtype: torch dtype (or its name, e.g. "bfloat16") to cast to.
        device: where to put the model.
        **overrides: MCSDConfig fields to override for a random initialization; for a
            pretrained name, pretraining settings (``synclearn.learn.pretrain.load_pretrained``).

    Returns:
        An ``MCSDLM`` (or an HF adapter) in eval mode.
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    key = str(name_or_path)
    from synclearn.learn.pretrain import PRETRAINED_NAMES, load_pretrained  # here: pretrain imports this module

    if key in PRETRAINED_NAMES:
        return load_pretrained(key, dtype=dtype, device=device, **overrides)
    size = key.removesuffix(RANDOM_SUFFIX)
    if size in NAMED_CONFIGS:
        model = build_model(named_config(size, **overrides), seed=seed, dtype=dtype, device=device)
        model.name = size + RANDOM_SUFFIX
        return model
    path = Path(name_or_path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{key!r} is neither a known model name (pretrained: {', '.join(sorted(PRETRAINED_NAMES))}; random: "
            f"{', '.join(n + RANDOM_SUFFIX for n in sorted(NAMED_CONFIGS))}) "
            f"nor a directory with a {CONFIG_FILE}"
        )
    data = json.loads((path / CONFIG_FILE).read_text())
    if data.get("model_type") != "mcsd":
        from synclearn.model.hf import load_hf_model

        return load_hf_model(path, dtype=dtype, device=device)
    saved_dtype = getattr(torch, data.pop("dtype", "float32"))
    version = data.pop("format_version", 1)
    if version not in (1, FORMAT_VERSION):
        raise ValueError(f"checkpoint {path} has format_version={version!r}; this synclearn reads 1 and {FORMAT_VERSION}")
    config = MCSDConfig.from_dict({**data, **overrides})
    model = build_model(config, dtype=saved_dtype)
    tensors = st_load_file(str(path / WEIGHTS_FILE))
    if version >= 2:  # neuron-major on disk -> the logical [D, d_ff]
        tensors = {k: (v.t() if k.endswith(_NEURON_MAJOR) else v) for k, v in tensors.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors and not (k == "lm_head.weight" and config.tie_embeddings)]
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in tensors.items()
             if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"checkpoint {path} does not match its config: missing {missing}, unexpected {unexpected}, "
                         f"wrong shapes {wrong}")
    model.load_state_dict(tensors, strict=False)  # copies into the neuron-major parameters
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()
