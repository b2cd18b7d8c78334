"""``synclearn pretrain``: a base model that knows how to chat, trained once and cached.

Facts taught in chat can only be recalled by a model that already knows the chat template
and the question/answer patterns. This trains an MCSD model on the built-in chat mix
(:mod:`synclearn.data.chat_mix`: fact questions with random values, small talk, built-in
text) with Lightning Fabric, and caches the result:

    model = pretrained_model("mcsd-chat")          # trains on first use, then loads
    python -m synclearn.learn.pretrain steps=2000   # or `synclearn pretrain ...`: Hydra overrides

The cache key is a hash of the :class:`PretrainConfig` (model shape, data, optimization,
precision, devices): change any of them and a new model is trained; ask again with the same
config and the cached one is loaded, never retrained. The cache lives in
``<cache>/pretrained/<key>/`` where ``<cache>`` is ``cache_dir`` if given, else
``$SYNCLEARN_CACHE``, else ``~/.cache/synclearn``. A finished entry holds the synclearn
checkpoint (``config.json`` + ``model.safetensors``), Fabric's training checkpoint
(``fabric.ckpt``) and ``pretrain.json`` (the config, the key, the loss curve, the time), written
last, so an entry without it is unfinished. A file lock makes concurrent runs with the same
key (a parallel sweep) train once.

The Fabric script follows setup -> main -> fit: ``Fabric(accelerator, devices, precision,
strategy)`` from the config; with several devices the strategy is DDP or FSDP (``strategy``),
each rank reading its own share of the windows.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from synclearn.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, build_model, load_model, save_model
from synclearn.model.config import NAMED_CONFIGS, MCSDConfig, named_config

DATA_VERSION = 2  # bump when synclearn.data.chat_mix changes what it generates: old caches go stale
META_FILE = "pretrain.json"
_PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
_STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp", "single_device")


@dataclass
class PretrainConfig:
    """Everything that decides the pretrained weights (and so the cache key).

    Attributes:
        name: a named MCSD size (``synclearn.model.config.NAMED_CONFIGS``).
        overrides: MCSDConfig fields changed from the named size.
        steps: optimizer steps. batch_size: windows per step (per device). seq_len: tokens per window.
        lr: peak learning rate (one-cycle: linear warm-up over ``warmup`` of the steps, cosine decay).
        weight_decay: AdamW weight decay. clip_norm: gradient clipping (0 = off).
        fact_share, smalltalk_share, world_share, n_world, recall_share: the mix (see
            :func:`synclearn.data.chat_mix.chat_mix`).
        seed: initialization and data seed.
        accelerator: "cpu", "cuda", "auto", ... devices: how many. precision: Fabric precision
        ("32-true", "bf16-mixed", ...). strategy: "auto", "ddp", "fsdp", ...
    """

    name: str = "mcsd-chat"
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int = 1200
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup: float = 0.05
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    fact_share: float = 0.6
    smalltalk_share: float = 0.25
    world_share: float = 0.5
    n_world: int = 3000
    recall_share: float = 0.0
    seed: int = 0
    accelerator: str = "cpu"
    devices: int = 1
    precision: str = "32-true"
    strategy: str = "auto"

    def __post_init__(self) -> None:
        self.overrides = dict(self.overrides or {})
        self.precision = str(self.precision)
        bad = []
        if self.name not in NAMED_CONFIGS:
            bad.append(f"name={self.name!r} (expected one of {sorted(NAMED_CONFIGS)})")
        else:
            try:
                self.model_config()
            except ValueError as err:
                bad.append(f"overrides={self.overrides!r}: {err}")
        for key in ("steps", "batch_size", "seq_len", "devices"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad.append(f"{key}={value!r} (expected a positive integer)")
        if not self.lr > 0 or not 0 <= self.warmup < 1 or self.weight_decay < 0 or self.clip_norm < 0:
            bad.append(f"lr={self.lr!r} > 0, 0 <= warmup={self.warmup!r} < 1, weight_decay={self.weight_decay!r} "
                       f">= 0 and clip_norm={self.clip_norm!r} >= 0 are required")
        if self.precision not in _PRECISIONS:
            bad.append(f"precision={self.precision!r} (expected one of {_PRECISIONS})")
        if self.strategy not in _STRATEGIES:
            bad.append(f"strategy={self.strategy!r} (expected one of {_STRATEGIES})")
        if bad:
            raise ValueError("invalid PretrainConfig: " + "; ".join(bad))

    def model_config(self) -> MCSDConfig:
        return named_config(self.name, **self.overrides)

    def key(self) -> str:
        """The cache key: a hash of every field and of the data version."""
        blob = json.dumps({"data_version": DATA_VERSION, **dataclasses.asdict(self),
                           "model": self.model_config().to_dict()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: the model names that mean a pretrained, cached base: public name -> its PretrainConfig settings.
#: ``load_model(name)`` and Hydra's ``model: <name>`` (``conf/model/<name>.yaml``) mean the same entry.
PRETRAINED_NAMES: dict[str, dict[str, Any]] = {"mcsd-chat": {"name": "mcsd-chat"}}
#: what ``load_model(<a pretrained name>, ...)`` accepts besides the PretrainConfig fields
LOAD_SETTINGS = ("cache_dir", "force", "progress", "threads")


def load_pretrained(name: str, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                    **settings: Any):
    """``load_model(name)`` for a name in :data:`PRETRAINED_NAMES`: the cached base (trained first if missing).

    Args:
        name: a key of :data:`PRETRAINED_NAMES`, e.g. ``"mcsd-chat"``.
        dtype, device: cast/move the loaded model.
        **settings: :class:`PretrainConfig` fields (a different base: another cache entry) or
            :data:`LOAD_SETTINGS`.

    Raises:
        ValueError: an unknown name or setting.
    """
    if name not in PRETRAINED_NAMES:
        raise ValueError(f"{name!r} is not a pretrained model name; known: {sorted(PRETRAINED_NAMES)}")
    accepted = sorted({f.name for f in dataclasses.fields(PretrainConfig)} - {"name"} | set(LOAD_SETTINGS))
    bad = sorted(set(settings) - set(accepted))
    if bad:
        raise ValueError(f"load_model({name!r}) does not take {', '.join(bad)}; it takes dtype, device and "
                         f"the pretraining settings {', '.join(accepted)}")
    model = pretrained_model(**{**PRETRAINED_NAMES[name], **settings})
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def display_name(config: PretrainConfig) -> str:
    """The short name of a pretrained base: its public name (``"mcsd-chat"``) when ``config`` is
    that name's default, else ``"<size>-pretrained-<key>"`` (a custom pretraining)."""
    for public, settings in PRETRAINED_NAMES.items():
        if PretrainConfig(**settings).key() == config.key():
            return public
    return f"{config.name}-pretrained-{config.key()}"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where pretrained models are cached: ``cache_dir``, else ``$SYNCLEARN_CACHE``, else
    ``~/.cache/synclearn``; entries go under ``pretrained/``."""
    root = cache_dir or os.environ.get("SYNCLEARN_CACHE") or Path.home() / ".cache" / "synclearn"
    return Path(root).expanduser() / "pretrained"


def pretrained_model(name: str = "mcsd-chat", *, cache_dir: str | None = None, force: bool = False,
                     progress: bool = True, threads: int = 0, **settings: Any):
    """The pretrained model for this config: loaded from the cache, trained first if missing.

    Args:
        name: the named MCSD size. cache_dir: see :func:`cache_root`.
        force: train again even when cached.
        progress: show a progress bar while training.
        threads: torch intra-op threads while training on CPU (0 = torch's default, one per core).
            Not part of the cache key. On a machine shared with other jobs, 1 avoids the
            oversubscription that makes small ops crawl.
        **settings: other :class:`PretrainConfig` fields.

    Returns:
        The ``MCSDLM`` in eval mode, with ``model.name`` = its short name (:func:`display_name`,
        e.g. ``"mcsd-chat"``) and ``model.pretrain_info`` = the entry's ``pretrain.json`` contents
        plus ``"name"``, ``"path"`` and ``"trained_now"``.
    """
    config = PretrainConfig(name=name, **settings)
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        path, trained_now = ensure_pretrained(config, cache_dir=cache_dir, force=force, progress=progress)
    finally:
        torch.set_num_threads(saved)
    model = load_model(path)
    model.name = display_name(config)
    model.pretrain_info = {**json.loads((path / META_FILE).read_text()), "name": model.name, "path": str(path),
                           "trained_now": trained_now}
    return model


def ensure_pretrained(config: PretrainConfig, *, cache_dir: str | os.PathLike | None = None, force: bool = False,
                      progress: bool = True) -> tuple[Path, bool]:
    """The cache entry of ``config`` (trained now if missing); returns (path, trained_now)."""
    root = cache_root(cache_dir)
    path = root / config.key()
    if (path / META_FILE).is_file() and not force:
        return path, False
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{config.key()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run with the same key waits, then reuses
        if (path / META_FILE).is_file() and not force:
            return path, False
        print(f"{display_name(config)} is not in the cache yet: pretraining it now ({config.steps} steps; "
              f"cached under {path} for next time)", file=sys.stderr, flush=True)
        tmp = root / f".{config.key()}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        meta = pretrain(config, tmp, progress=progress)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        print(f"pretrained {config.name} ({meta['parameters'] / 1e6:.2f}M parameters, {config.steps} steps) in "
              f"{meta['seconds']:.0f}s: loss {meta['first_loss']:.3f} -> {meta['last_loss']:.3f}; cached at {path}")
    return path, True


# -- the Fabric script: setup -> main -> fit ------------------------------------------------------


def setup(config: PretrainConfig):
    """Fabric from the config (DDP/FSDP only when there are several devices)."""
    from lightning.fabric import Fabric

    strategy = config.strategy if config.devices > 1 else "auto"
    fabric = Fabric(accelerator=config.accelerator, devices=config.devices, precision=config.precision,
                    strategy=strategy)
    fabric.launch()
    return fabric


def pretrain(config: PretrainConfig, out_dir: str | os.PathLike, *, progress: bool = True) -> dict[str, Any]:
    """Train ``config`` into ``out_dir``; returns what ``pretrain.json`` records."""
    fabric = setup(config)
    return main(fabric, config, Path(out_dir), progress=progress)


def main(fabric: Any, config: PretrainConfig, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    from synclearn.data.chat_mix import chat_mix

    t0 = time.perf_counter()
    fabric.seed_everything(config.seed, verbose=False)
    model_config = config.model_config()
    model = build_model(model_config, seed=config.seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))
    model, optimizer = fabric.setup(model, optimizer)
    window = config.seq_len + 1
    per_step = config.batch_size * fabric.world_size
    data = chat_mix(config.steps * per_step * window, seed=config.seed, fact_share=config.fact_share,
                    smalltalk_share=config.smalltalk_share, world_share=config.world_share,
                    n_world=config.n_world, recall_share=config.recall_share)
    losses = fit(fabric, model, optimizer, data, config, progress=progress)

    out_dir.mkdir(parents=True, exist_ok=True)
    fabric.save(out_dir / "fabric.ckpt", {"model": model, "step": config.steps})
    fabric.barrier()
    meta: dict[str, Any] = {}
    if fabric.global_rank == 0:
        state = torch.load(out_dir / "fabric.ckpt", map_location="cpu", weights_only=True)["model"]
        plain = build_model(model_config)
        plain.load_state_dict(state)
        save_model(plain, out_dir)
        n = max(1, len(losses) // 20)
        meta = {"key": config.key(), "config": dataclasses.asdict(config), "model": model_config.to_dict(),
                "parameters": plain.num_parameters(), "seconds": time.perf_counter() - t0,
                "tokens": config.steps * per_step * config.seq_len, "first_loss": sum(losses[:n]) / n,
                "last_loss": sum(losses[-n:]) / n, "losses": losses[:: max(1, len(losses) // 200)],
                "data_version": DATA_VERSION, "created_at": time.time()}
        assert (out_dir / CONFIG_FILE).is_file() and (out_dir / WEIGHTS_FILE).is_file()
        (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    fabric.barrier()
    return meta


def fit(fabric: Any, model: Any, optimizer: Any, data: torch.Tensor, config: PretrainConfig, *,
        progress: bool = True) -> list[float]:
    """AdamW over consecutive windows of ``data`` (each rank its own), one-cycle schedule."""
    from tqdm.auto import tqdm

    window, rank, world = config.seq_len + 1, fabric.global_rank, fabric.world_size
    warm = max(1, int(config.warmup * config.steps))

    def lr_at(step: int) -> float:
        if step < warm:
            return config.lr * (step + 1) / warm
        return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, config.steps - warm)))

    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="pretrain", disable=not progress or rank != 0, mininterval=1.0)
    for step in bar:
        start = (step * world + rank) * config.batch_size * window
        batch = data[start : start + config.batch_size * window].view(config.batch_size, window)  # [B, T+1]
        batch = batch.to(fabric.device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        logits = model(batch[:, :-1])  # [B, T, V]
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(loss)
        if config.clip_norm:
            fabric.clip_gradients(model, optimizer, max_norm=config.clip_norm)
        optimizer.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    return losses


def cli_main(argv: list[str] | None = None) -> int:
    """``synclearn pretrain [overrides]``: Hydra overrides of ``conf/pretrain.yaml`` (which takes
    the model group's pretraining settings), e.g. ``steps=2000`` or ``force=true``."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from synclearn.run import CONF_DIR

    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(cli_main.__doc__)
        return 0
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=argv)
    settings = OmegaConf.to_container(cfg.model, resolve=True)
    target = settings.pop("_target_", None)
    if target != "synclearn.learn.pretrain.pretrained_model":
        raise SystemExit(f"model={target!r} is not a pretrained model; pick one whose _target_ is "
                         "synclearn.learn.pretrain.pretrained_model (e.g. model=mcsd-chat)")
    model = instantiate({"_target_": target, **settings, "force": bool(cfg.force)})
    info = model.pretrain_info
    print(f"{'trained' if info['trained_now'] else 'cached'}: {info['path']} ({info['parameters'] / 1e6:.2f}M "
          f"parameters, {info['seconds']:.0f}s to train, loss {info['first_loss']:.3f} -> {info['last_loss']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main())
