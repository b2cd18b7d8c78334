"""One experiment from a composed Hydra config: build everything, run the benchmark, write it all.

``synclearn run`` (:mod:`synclearn.run`) composes ``conf/config.yaml`` and calls
:func:`run_experiment` with the Hydra output directory. Each config group maps to code:

* ``model``: ``_target_`` returns the model (``synclearn.learn.pretrain.pretrained_model`` for
  the cached chat base, ``synclearn.model.load_model`` for a named size or a checkpoint);
* ``learner``: :class:`~synclearn.options.LearnerOptions`, the :class:`~synclearn.learn.Learner`'s
  settings (the model, the log and, with ``memory.journal``, the step journal are given here);
* ``memory``: a :class:`MemorySetup` (replay ratio, batch size, consolidation, fading, journal);
* ``replay``: the replay policy (``policy(candidates, k, rng, now) -> ids``);
* ``serve``: :class:`~synclearn.options.ServeOptions` (sampling, and how the learner shares the CPU);
* ``benchmark``: a partial function with the benchmark contract below.

The benchmark contract (a new benchmark is one module with a ``run`` function and one
``conf/benchmark/<name>.yaml`` naming it as ``_target_`` with ``_partial_: true``; its other
keys are the function's options):

* ``needs_model: true`` (the default): ``run(*, model, learner, log, out_dir, memory, serve,
  seed, progress, **options)`` gets the built model, a :class:`~synclearn.learn.Learner` on it
  logging into ``log``, the bound memory setup and the :class:`~synclearn.options.ServeOptions`;
* ``needs_model: false`` (it builds its own model, e.g. a classifier): the model group is not
  built; ``run(out_dir, *, learner, memory, seed, progress, **options)`` gets the learner
  group's settings (plain Learner arguments) and the unbound memory setup.

It returns a dict of flat scalars (written to ``metrics.json``/``metrics.csv``; ``acc`` is the
sweep objective), ``series`` (nested data) and ``summary`` (lines printed at the end).

Everything lands in the output directory: ``interactions.db`` (the log), ``checkpoints/``
(model + learner state, :class:`~synclearn.chat.checkpoint.CheckpointStore`), ``metrics.json``
(flat scalars plus ``series``), ``metrics.csv`` (the scalars), the benchmark's plots, and
``summary.txt`` (the lines printed at the end).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from synclearn.options import REHEARSAL_FIELDS, AttachOptions, LearnerOptions, ServeOptions

_ATTACH = AttachOptions()  # MemorySetup's defaults are the attach options' (defined once)


def make_consolidation(learner: Any, policy: str = "auto", sparse_policy: str = "lock", **options: Any):
    """A :class:`~synclearn.memory.Consolidation` for ``learner``; ``policy="auto"`` picks
    ``sparse_policy`` ("lock" or "damp") for sparse learners and "ewc" for LoRA/full ones
    (which have no neurons to lock or damp)."""
    from synclearn.memory import Consolidation

    if sparse_policy not in ("lock", "damp"):
        raise ValueError(f"sparse_policy={sparse_policy!r} (expected 'lock' or 'damp')")
    if policy == "auto":
        policy = sparse_policy if learner.update == "sparse" else "ewc"
    return Consolidation(learner, policy, **options)


@dataclass
class MemorySetup:
    """What is remembered and how (the ``memory`` config group).

    Attributes:
        replay_ratio: share of each learning batch drawn from replay (0 = no replay).
        batch_size: examples per learning step.
        consolidation: a callable ``learner -> Consolidation`` (a partial of
            :func:`make_consolidation`), or None for none.
        consolidate_every: apply the consolidation policy every this many steps.
        fading: a :class:`~synclearn.memory.Fading` (faded records leave replay), or None.
        journal: keep a step journal (exact forgetting) in the output directory.
        new_repeats: at most this many steps train each new turn (each with fresh replay)
            before it counts as learned; ``learned_loss`` ends that early once its loss is below
            it, ``min_gain`` once two steps in a row stayed above ``1 - min_gain`` times its best loss;
            ``until_reproduced``: early once the model reproduces it, instead of by ``learned_loss``.
    """

    replay_ratio: float = _ATTACH.replay_ratio
    batch_size: int = _ATTACH.batch_size
    consolidation: Callable[[Any], Any] | None = None
    consolidate_every: int = _ATTACH.consolidate_every
    fading: Any = None
    journal: bool = False
    new_repeats: int = _ATTACH.new_repeats
    learned_loss: float | None = _ATTACH.learned_loss
    min_gain: float | None = _ATTACH.min_gain
    until_reproduced: bool = _ATTACH.until_reproduced

    def __post_init__(self) -> None:
        try:  # the checks of these fields are AttachOptions'
            AttachOptions(**self.rehearsal())
        except ValueError as err:
            raise ValueError(str(err).replace("invalid AttachOptions", "invalid MemorySetup")) from None
        self.policy: Any = None
        self.consolidator: Any = None

    def rehearsal(self) -> dict[str, Any]:
        """The :data:`~synclearn.options.REHEARSAL_FIELDS` of this setup."""
        return {name: getattr(self, name) for name in REHEARSAL_FIELDS}

    def bind(self, learner: Any, policy: Any) -> "MemorySetup":
        """Build the run-time parts for ``learner``, with ``policy`` the replay policy."""
        self.policy = self.fading.pool(policy) if self.fading is not None else policy
        self.consolidator = self.consolidation(learner) if self.consolidation is not None else None
        return self

    def attach_options(self) -> dict[str, Any]:
        """:class:`~synclearn.learn.sync.LearnerHandle` settings for this memory setup."""
        if self.policy is None:
            raise RuntimeError("MemorySetup.bind(learner, policy) must run before attach_options()")
        return {"policy": self.policy, "consolidation": self.consolidator, **self.rehearsal()}

    def builder(self, log: Any, seed: int = 0):
        """A :class:`~synclearn.memory.ReplayBatchBuilder` with these settings (for benchmarks
        that drive ``learner.step`` themselves)."""
        from synclearn.memory import ReplayBatchBuilder

        return ReplayBatchBuilder(log, self.policy, replay_ratio=self.replay_ratio, batch_size=self.batch_size,
                                  seed=seed, new_repeats=self.new_repeats, learned_loss=self.learned_loss,
                                  min_gain=self.min_gain, until_reproduced=self.until_reproduced)


# the serve group builds ServeOptions (the name benchmarks used before it moved to synclearn.options)
ServeSettings = ServeOptions


def run_experiment(cfg: Any, out_dir: str | Path) -> dict[str, Any]:
    """Build the model, log, learner and memory from ``cfg``, run its benchmark into ``out_dir``,
    write ``metrics.json``/``metrics.csv``/``summary.txt`` and a checkpoint; returns the metrics.

    A benchmark whose config says ``needs_model: false`` (split-digits and text-domains build
    their own model) gets no model, learner or log, and the model group is not built:
    :func:`run_own_model_benchmark` calls it as ``run(out_dir, *, learner, memory, seed,
    progress, **options)``, ``learner`` being the learner group's settings."""
    from hydra.utils import instantiate

    from synclearn.chat.checkpoint import CheckpointStore
    from synclearn.learn import Learner
    from synclearn.memory import InteractionLog

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    benchmark_cfg, needs_model = benchmark_config(cfg.benchmark)
    if not needs_model:
        return run_own_model_benchmark(cfg, out_dir)
    model = instantiate(cfg.model)
    model_s = time.perf_counter() - t0
    log = InteractionLog(out_dir / "interactions.db")
    memory = instantiate(cfg.memory)
    journal = out_dir / "journal" if memory.journal else None
    learner = Learner(model, log, journal=journal, **learner_options(cfg.learner).kwargs())
    memory.bind(learner, instantiate(cfg.replay))
    serve = instantiate(cfg.serve)
    if serve.serve_threads:
        torch.set_num_threads(serve.serve_threads)
    benchmark = instantiate(benchmark_cfg)
    try:
        results = benchmark(model=model, learner=learner, log=log, out_dir=out_dir, memory=memory, serve=serve,
                            seed=cfg.seed, progress=cfg.progress)
        if cfg.save_checkpoint:
            base = getattr(model, "pretrain_info", {}).get("path") or str(cfg.model.get("name_or_path", "model"))
            CheckpointStore(out_dir / "checkpoints", keep=1).save(model, learner, base=base, seed=cfg.seed, log=log)
    finally:
        log.close()
    info = getattr(model, "pretrain_info", None)
    results.update({"wall_s": time.perf_counter() - t0, "model_s": model_s,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "pretrained_now": float(bool(info and info["trained_now"])),
                    "pretrain_s": float(info["seconds"]) if info else float("nan")})
    write_metrics(results, out_dir)
    return results


def benchmark_config(benchmark_cfg: Any) -> tuple[dict[str, Any], bool]:
    """The benchmark group as (what to instantiate, whether it needs the model group). Its
    ``needs_model`` key (default true) says whether the benchmark is handed the model, the
    learner and the log (chat-facts) or builds its own model (``needs_model: false``)."""
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(benchmark_cfg, resolve=True)
    needs_model = settings.pop("needs_model", True)
    if not isinstance(needs_model, bool):
        raise ValueError(f"benchmark.needs_model={needs_model!r} (expected true or false)")
    return settings, needs_model


def learner_options(learner_cfg: Any) -> LearnerOptions:
    """The learner group as :class:`~synclearn.options.LearnerOptions` (checked; unknown keys refused)."""
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(learner_cfg, resolve=True)
    settings.pop("_target_", None)
    return LearnerOptions.from_dict(settings)


def learner_settings(learner_cfg: Any) -> dict[str, Any]:
    """The learner group's keys as plain Learner arguments (checked as LearnerOptions), None
    values (= "the benchmark's default", e.g. ``learner.lr: null``) left out."""
    from omegaconf import OmegaConf

    given = OmegaConf.to_container(learner_cfg, resolve=True)
    options = learner_options(learner_cfg).kwargs()
    return {k: options[k] for k in given if k != "_target_" and options[k] is not None}


def run_own_model_benchmark(cfg: Any, out_dir: Path) -> dict[str, Any]:
    """:func:`run_experiment` for a benchmark that builds its own model (``needs_model: false``):
    nothing of the ``model`` group is built (no chat-base pretraining), and there is no
    interaction log or checkpoint. The benchmark gets the learner group's settings
    (:func:`learner_settings`) and the memory group (a :class:`MemorySetup`, not bound);
    ``serve.serve_threads`` sets the torch threads (0 = leave as is)."""
    from hydra.utils import instantiate

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    memory = instantiate(cfg.memory)
    serve = instantiate(cfg.serve)
    if serve.serve_threads:
        torch.set_num_threads(serve.serve_threads)
    benchmark = instantiate(benchmark_config(cfg.benchmark)[0])
    results = benchmark(out_dir=out_dir, learner=learner_settings(cfg.learner), memory=memory, seed=cfg.seed,
                        progress=cfg.progress)
    results["wall_s"] = time.perf_counter() - t0
    write_metrics(results, out_dir)
    return results


def write_metrics(results: dict[str, Any], out_dir: Path) -> None:
    """``metrics.json`` (scalars at the top level, ``series`` nested), ``metrics.csv`` (one row
    per scalar) and ``summary.txt``."""
    summary = list(results.get("summary", []))
    data = {k: v for k, v in results.items() if k != "summary"}
    (out_dir / "metrics.json").write_text(json.dumps(data, indent=2, default=_json_default))
    with open(out_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "value"])
        for key, value in data.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.writerow([key, value])
    (out_dir / "summary.txt").write_text("\n".join(summary) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def summary_line(results: dict[str, Any], out_dir: Path) -> str:
    """The one line printed at the very end of a run."""
    parts = [f"{k}={results[k]:.3g}" for k in ("acc", "bwt", "forgetting", "latency_overhead_p50")
             if isinstance(results.get(k), float) and not math.isnan(results[k])]
    recall = sorted((int(k.removeprefix("recall_d")), v) for k, v in results.items() if k.startswith("recall_d"))
    if recall:
        parts.insert(0, f"recall@{recall[-1][0]}={recall[-1][1]:.0%}")
    return f"done in {results['wall_s']:.0f}s: {' '.join(parts)} -> {out_dir}"
