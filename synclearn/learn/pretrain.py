"""``synclearn pretrain``: a base model that knows how to chat, trained once and cached.

Facts taught in chat can only be recalled by a model that already knows the chat template
and the question/answer patterns. This trains an MCSD model on the built-in chat mix
(:mod:`synclearn.data.chat_mix`: fact questions with random values, small talk, built-in
text) with Lightning Fabric, and caches the result:

    model = pretrained_model("mcsd-chat")          # trains on first use, then loads
    python -m synclearn.learn.pretrain model.steps=2000   # or `synclearn pretrain ...`: Hydra overrides

The cache key is a hash of the :class:`PretrainConfig` (model shape, data, optimization,
precision, devices): change any of them and a new model is trained; ask again with the same
config and the cached one is loaded, never retrained. The cache lives in
``<cache>/pretrained/<key>/`` where ``<cache>`` is ``cache_dir`` if given, else
``$SYNCLEARN_CACHE``, else ``~/.cache/synclearn``. A finished entry holds the synclearn
checkpoint (``config.json`` + ``model.safetensors``), Fabric's training checkpoint
(``fabric.ckpt``) and ``pretrain.json`` (the config, the key, the loss curve, the time), written
last, so an entry without it is unfinished. A file lock makes concurrent runs with the same
key (a parallel sweep) train once.

Training is the Fabric script of :mod:`synclearn.learn.pretrain_fabric` (setup -> main -> fit):
one process, or several with DDP (gloo on CPU, NCCL on CUDA) or FSDP (CUDA; bases that do not
fit one device), e.g. ``synclearn pretrain model.devices=2 model.strategy=ddp``; only rank 0
takes the lock and writes the entry, the ranks agree on the data and split every global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from synclearn.model.checkpoint import load_model
from synclearn.model.config import NAMED_CONFIGS, MCSDConfig, named_config

DATA_VERSION = 2  # bump when synclearn.data.chat_mix changes what it generates: old caches go stale
META_FILE = "pretrain.json"
_PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
_STRATEGIES = ("auto", "ddp", "fsdp")


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
        accelerator: "cpu", "cuda", "auto", ... devices: processes per node (each with one
            device: a GPU, or a share of the CPU cores). num_nodes: machines (left out of the key
            while 1, so caches made before it existed stay valid). precision: Fabric precision
            ("32-true", "bf16-mixed", ...). strategy: "auto" or "ddp" (DDP: gloo on CPU, NCCL on
            CUDA) or "fsdp" (sharded, for bases that do not fit one device); used when
            devices * num_nodes > 1. The global batch is ``batch_size * devices * num_nodes``.
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
    num_nodes: int = 1

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
        for key in ("steps", "batch_size", "seq_len", "devices", "num_nodes"):
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
        elif self.strategy == "fsdp" and self.accelerator == "cpu":
            bad.append("strategy='fsdp' with accelerator='cpu' (Fabric's FSDP runs on CUDA devices only: "
                       "accelerator=cuda, or strategy=ddp on CPU)")
        if bad:
            raise ValueError("invalid PretrainConfig: " + "; ".join(bad))

    def model_config(self) -> MCSDConfig:
        return named_config(self.name, **self.overrides)

    def key(self) -> str:
        """The cache key: a hash of every field and of the data version."""
        fields = dataclasses.asdict(self)
        if fields["num_nodes"] == 1:
            del fields["num_nodes"]
        model = self.model_config().to_dict()
        if not model["gated_decay"]:  # a field added later: bases cached before it keep their keys
            del model["gated_decay"]
        blob = json.dumps({"data_version": DATA_VERSION, **fields, "model": model}, sort_keys=True, default=str)
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
    meta = json.loads((path / META_FILE).read_text())
    if "predictor_recall" not in meta:  # cached before pretraining fitted the predictors: fit them once now
        model, meta = _fit_cached_predictors(model, config, path)
    model.name = display_name(config)
    model.pretrain_info = {**meta, "name": model.name, "path": str(path), "trained_now": trained_now}
    return model


@contextlib.contextmanager
def entry_lock(root: Path, config: PretrainConfig) -> Iterator[None]:
    """Hold the exclusive file lock of ``config``'s cache entry under ``root``."""
    with open(root / f".{config.key()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _fit_cached_predictors(model: Any, config: PretrainConfig, path: Path) -> tuple[Any, dict]:
    """Fit the sparse-decode predictors of a cache entry written before pretraining fitted them
    (only predictor weights change), under the entry's lock; files are replaced whole."""
    from synclearn.durable import atomic_write
    from synclearn.learn.pretrain_fabric import fit_base_predictors
    from synclearn.model.checkpoint import save_model

    with entry_lock(path.parent, config):
        meta = json.loads((path / META_FILE).read_text())
        if "predictor_recall" in meta:  # another process did it meanwhile
            return load_model(path), meta
        meta["predictor_recall"] = fit_base_predictors(model, config)
        save_model(model, path)  # each file replaced whole
        atomic_write(path / META_FILE, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))  # last
    return model, meta


def ensure_pretrained(config: PretrainConfig, *, cache_dir: str | os.PathLike | None = None, force: bool = False,
                      progress: bool = True) -> tuple[Path, bool]:
    """The cache entry of ``config`` (trained now if missing); returns (path, trained_now).

    With several processes only rank 0 takes the file lock, decides and writes; a process that
    Fabric started for this pretraining trains along and then exits (SystemExit(0)): it was
    started by running the whole command line again, and the rest of that program is rank 0's.
    """
    from synclearn.learn import pretrain_fabric as dist

    root = cache_root(cache_dir)
    path = root / config.key()
    complete = (path / META_FILE).is_file() and not force
    if dist.is_launched_child(config):
        dist.run(config, None, progress=False)
        raise SystemExit(0)
    if not dist.is_rank_zero(config):  # an external launcher (torchrun, srun) started every rank
        if not complete:
            pretrain(config, None, progress=False)
        return path, not complete
    if complete:
        return path, False
    if dist.world_of(config) > 1:
        refuse_inside_multirun(config)
    root.mkdir(parents=True, exist_ok=True)
    with entry_lock(root, config):  # a concurrent run with the same key waits, then reuses
        if (path / META_FILE).is_file() and not force:
            return path, False
        print(f"{display_name(config)} is not in the cache yet: pretraining it now ({config.steps} steps on "
              f"{dist.world_of(config)} process(es); cached under {path} for next time)", file=sys.stderr, flush=True)
        tmp = root / f".{config.key()}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)

        def commit() -> None:
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)

        try:
            meta = pretrain(config, tmp, progress=progress, commit=commit)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"pretrained {config.name} ({meta['parameters'] / 1e6:.2f}M parameters, {config.steps} steps) in "
              f"{meta['seconds']:.0f}s: loss {meta['first_loss']:.3f} -> {meta['last_loss']:.3f}; cached at {path}")
    return path, True


def refuse_inside_multirun(config: PretrainConfig) -> None:
    """Fabric's launcher re-runs the command line for each rank; inside a Hydra multirun that
    would re-run the whole sweep in every rank, so say how to do it instead."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ValueError(f"model.devices={config.devices} (multi-process pretraining) cannot start inside a sweep: "
                         "pretrain the base first (synclearn pretrain model.devices=... model.strategy=...), "
                         "then sweep with the same model settings, which load it from the cache")


def pretrain(config: PretrainConfig, out_dir: str | os.PathLike | None, *, progress: bool = True,
             commit: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train ``config`` into ``out_dir`` (rank 0; None on the other ranks) with Lightning Fabric
    (:mod:`synclearn.learn.pretrain_fabric`); returns what ``pretrain.json`` records."""
    from synclearn.learn import pretrain_fabric

    return pretrain_fabric.run(config, None if out_dir is None else Path(out_dir), progress=progress, commit=commit)


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
