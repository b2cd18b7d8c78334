"""The Fabric script of :mod:`synclearn.learn.pretrain`: setup -> main -> fit, on one or several processes.

One process (``devices=1``) or several: ``strategy="ddp"`` (gloo on CPU, NCCL on CUDA) or
``strategy="fsdp"`` (parameters, gradients and optimizer state sharded over the devices, for
bases that do not fit one device; the full weights are gathered on rank 0 to be cached).

How the processes come to be. With several devices on one machine, Fabric's launcher starts
the other ranks by running the same command line again (``LOCAL_RANK=1 synclearn pretrain
...``), so everything before the launch runs again in every child. Only the launching rank
(rank 0) takes the cache's file lock and decides to train; it marks the launch in the
environment (:data:`LAUNCH_ENV` = the config's key), which the children inherit, so a child
that reaches :func:`synclearn.learn.pretrain.ensure_pretrained` neither waits on that lock
(the old deadlock: rank 0 held it and waited in the rendezvous for a child that waited on the
lock) nor looks at the cache: it trains along and exits once the entry is written
(:func:`is_launched_child`). Under an external launcher (``torchrun``, ``srun`` with one task
per device) every rank runs the program: ranks other than 0 skip the lock, train along and
return the cached path.

What the ranks agree on: rank 0 broadcasts the output folder; every rank generates the same
data (same seed) and the ranks compare a checksum of it before the first step; at step ``s``
rank ``r`` reads windows ``[(s * world + r) * B, (s * world + r + 1) * B)``, so the global batch
of step ``s`` is the same ``world * B`` windows a single process with batch ``world * B`` reads.
The recorded loss is the mean over ranks. Only rank 0 writes the cache entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from synclearn.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, build_model, save_model

LAUNCH_ENV = "SYNCLEARN_PRETRAIN_LAUNCH"  # the key of the pretraining whose children are being launched
# what Fabric's launcher (and seed_everything) put into the launching process's environment
_LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS",
                 "PL_GLOBAL_SEED", LAUNCH_ENV)


def world_of(config: Any) -> int:
    """How many processes ``config`` trains on."""
    return config.devices * config.num_nodes


def env_rank(devices: int = 1) -> int:
    """This process's global rank as a launcher set it in the environment (0 when none did);
    ``devices``: processes per node."""
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    return int(os.environ.get("NODE_RANK", 0)) * devices + int(os.environ.get("LOCAL_RANK", 0))


def is_launched_child(config: Any) -> bool:
    """True in a process that Fabric started for this very pretraining (it exits when done)."""
    return world_of(config) > 1 and os.environ.get(LAUNCH_ENV) == config.key() and "LOCAL_RANK" in os.environ


def is_rank_zero(config: Any) -> bool:
    """True where the cache entry is decided and written (the only rank that takes the lock)."""
    return world_of(config) == 1 or env_rank(config.devices) == 0


def strategy_for(config: Any) -> Any:
    """The Fabric strategy: FSDP when asked (wrapping each MCSD block, the full state dict
    gathered on rank 0 for saving; on one device too), else ``"auto"`` on one process and DDP
    on several (``"auto"`` and ``"ddp"`` alike)."""
    if config.strategy == "fsdp":
        from lightning.fabric.strategies import FSDPStrategy

        from synclearn.model.mcsd import MCSDBlock

        return FSDPStrategy(auto_wrap_policy={MCSDBlock}, state_dict_type="full")
    if world_of(config) == 1:
        return "auto"
    from lightning.fabric.strategies import DDPStrategy

    # the sparse-inference predictors take no part in the dense loss: DDP must not wait for their gradients
    return DDPStrategy(find_unused_parameters=True)


def run(config: Any, out_dir: Path | None, *, progress: bool = True,
        commit: Callable[[], None] | None = None) -> dict[str, Any]:
    """Launch (rank 0) or join (other ranks) the processes, train, write ``out_dir`` on rank 0.

    Args:
        config: the ``PretrainConfig``.
        out_dir: where rank 0 writes the entry (None on the other ranks: they get it from rank 0).
        progress: a progress bar on rank 0.
        commit: called on rank 0 once the entry is complete, before the ranks part (it moves the
            entry into the cache, so every rank finds it there afterwards).

    Returns:
        What ``pretrain.json`` records (an empty dict on ranks other than 0).
    """
    from lightning.fabric import Fabric

    # this process starts the others of its node (Fabric's subprocess launcher), unless a launcher already did
    launching = (world_of(config) > 1 and "LOCAL_RANK" not in os.environ and "RANK" not in os.environ
                 and int(os.environ.get("SLURM_NTASKS", 1)) == 1)
    saved = {var: os.environ.get(var) for var in _LAUNCHER_ENV}
    had_group = torch.distributed.is_available() and torch.distributed.is_initialized()
    if launching:  # (without OMP_NUM_THREADS, Fabric gives each of the node's processes cores // devices threads)
        os.environ[LAUNCH_ENV] = config.key()
    try:
        fabric = Fabric(accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes,
                        precision=config.precision, strategy=strategy_for(config))
        fabric.launch()
        out_dir = Path(fabric.broadcast(str(out_dir) if out_dir is not None else None, src=0))
        meta = main(fabric, config, out_dir, progress=progress)
        if fabric.global_rank == 0 and commit is not None:
            commit()
        fabric.barrier()
        return meta
    finally:
        if not had_group and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if launching:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value


def data_checksum(data: torch.Tensor) -> int:
    """A 60-bit hash of a token tensor (ranks compare it to agree on the data)."""
    return int(hashlib.sha256(data.cpu().numpy().tobytes()).hexdigest()[:15], 16)


def main(fabric: Any, config: Any, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Build, train and (rank 0) save; returns the ``pretrain.json`` contents on rank 0."""
    from synclearn.learn.pretrain import DATA_VERSION, META_FILE

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
    data = pretraining_mix(config, config.steps * per_step * window, seed=config.seed)
    checksum = data_checksum(data)
    reference = fabric.broadcast(checksum, src=0)
    differ = fabric.all_reduce(torch.tensor(float(checksum != reference), device=fabric.device), reduce_op="sum")
    if float(differ) > 0:  # every rank raises, none is left waiting in a collective
        raise RuntimeError(f"{int(differ)} rank(s) generated other pretraining data than rank 0 "
                           f"(checksum {checksum} on rank {fabric.global_rank}, {reference} on rank 0)")
    losses = fit(fabric, model, optimizer, data, config, progress=progress)

    if fabric.global_rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    fabric.barrier()
    fabric.save(out_dir / "fabric.ckpt", {"model": model, "step": config.steps})  # rank 0 writes (FSDP: gathered)
    fabric.barrier()
    meta: dict[str, Any] = {}
    if fabric.global_rank == 0:
        state = torch.load(out_dir / "fabric.ckpt", map_location="cpu", weights_only=True)["model"]
        plain = build_model(model_config)
        plain.load_state_dict(state)
        predictor_recall = fit_base_predictors(plain, config)  # after training: the base ships them fitted
        save_model(plain, out_dir)
        n = max(1, len(losses) // 20)
        meta = {"key": config.key(), "config": dataclasses.asdict(config), "model": model_config.to_dict(),
                "parameters": plain.num_parameters(), "seconds": time.perf_counter() - t0,
                "world_size": fabric.world_size, "strategy": type(fabric.strategy).__name__,
                "tokens": config.steps * per_step * config.seq_len, "first_loss": sum(losses[:n]) / n,
                "last_loss": sum(losses[-n:]) / n, "losses": losses[:: max(1, len(losses) // 200)],
                "data_version": DATA_VERSION, "created_at": time.time(), "predictor_recall": predictor_recall}
        assert (out_dir / CONFIG_FILE).is_file() and (out_dir / WEIGHTS_FILE).is_file()
        (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    fabric.barrier()
    return meta


def pretraining_mix(config: Any, n_tokens: int, seed: int) -> torch.Tensor:
    """At least ``n_tokens`` of ``config``'s pretraining mix (:func:`~synclearn.data.chat_mix.chat_mix`)
    from ``seed``: the training stream, or a stream apart from it for fitting the predictors."""
    from synclearn.data.chat_mix import chat_mix

    return chat_mix(n_tokens, seed=seed, fact_share=config.fact_share, smalltalk_share=config.smalltalk_share,
                    world_share=config.world_share, n_world=config.n_world, recall_share=config.recall_share)


PREDICTOR_WINDOWS = 32  # pretraining-mix windows the predictors are fitted on (x seq_len tokens)


def fit_base_predictors(model: Any, config: Any) -> dict[str, float]:
    """Fit the sparse-decode predictors of a pretrained base (:func:`~synclearn.model.fit_predictors`)
    on windows of its own pretraining mix (a stream seeded apart from the training one); only the
    predictors change, so dense outputs stay the same. Returns layer -> top-10% recall (as str keys,
    for ``pretrain.json``); {} for a model without predictors."""
    from synclearn.model import fit_predictors

    if not any(getattr(m, "predictor", None) is not None for m in model.modules()):
        return {}
    window = config.seq_len
    data = pretraining_mix(config, PREDICTOR_WINDOWS * window, seed=config.seed + 7_919)
    data = data[: PREDICTOR_WINDOWS * window].view(-1, window)
    device = next(model.parameters()).device
    batches = [data[i : i + 8].to(device) for i in range(0, len(data), 8)]
    return {str(layer): round(r, 4) for layer, r in fit_predictors(model, batches, seed=config.seed).items()}


def fit(fabric: Any, model: Any, optimizer: Any, data: torch.Tensor, config: Any, *,
        progress: bool = True) -> list[float]:
    """AdamW over consecutive windows of ``data`` (each rank its own share of every global batch),
    one-cycle schedule; returns the per-step loss averaged over the ranks."""
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
        losses.append(float(fabric.all_reduce(loss.detach(), reduce_op="mean")) if world > 1 else loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    return losses
