"""Split-Digits: a continual-learning benchmark on scikit-learn's bundled 8x8 digits.

The 1797 digits (64 pixels, 10 classes) are split, stratified and fixed by ``seed``, into a
train and a test set, then into 5 tasks of 2 classes, learned in order ``(0, 1), (2, 3), ...,
(8, 9)`` by a small :class:`~synclearn.model.classifier.SelectableClassifier`:

* ``setting="class"`` (class-incremental): the model predicts among all 10 classes, in
  training and at test time; nothing tells it which task an input comes from.
* ``setting="task"`` (task-incremental): the logits are masked to the input's own task
  (``LabelBatch.allowed``, one [10] row per example), in training and at test time.

Methods (``METHODS``; one :class:`~synclearn.learn.Learner` each, same epochs for all)::

    naive           sparse updates (neuron_fraction of the neurons per step), no replay
    replay          sparse + a reservoir replay buffer mixed into each batch
    consolidation   sparse + replay + Consolidation("lock") at each task boundary
    lora, full      LoRA adapters / dense AdamW, no replay
    lora+replay     LoRA + the same replay buffer
    full+replay     dense AdamW + the same replay buffer
    anchors         sparse + replay + logit replay (dark experience replay, DER++: Buzzega
                    et al. 2020): each example's logits are recorded when it enters the
                    buffer, and a replayed example adds ``logit_weight`` x MSE(logits now,
                    recorded logits) to its label loss -- the classifier's counterpart of the
                    language model's anchors (:mod:`synclearn.learn.anchors`: recorded
                    predictions kept by a distillation term)

LoRA and full updates have no neurons to lock, so their consolidation is the EWC penalty of
``Consolidation("ewc")`` (``EWC_METHODS``: lora+ewc, lora+replay+ewc, full+ewc,
full+replay+ewc): at each task boundary the Fisher information (squared gradients of the loss)
is estimated on the task's training examples and every later step is pulled toward the
weights of that boundary. These are not in ``METHODS`` (the benchmark scripts' default list)
and have no tuned learning rate: they use the rate of the same method without ``+ewc``.

Logit replay (``anchors``): when the reservoir takes an example (the first epoch of its task,
right after the step that learned it), the model's logits for it are recorded
(:class:`StoredLogits`, [N_train, 10]); :class:`LogitReplayBatch` -- a :class:`LabelBatch`
with the recorded logits of its replayed rows -- adds ``logit_weight x mean over replayed rows
of mean_c (z_c - z*_c)^2`` (:func:`logit_distillation`; all 10 logits, in both settings) to the
label cross entropy that every row already has. ``logit_record="task_end"`` records them once
more when the example's own task ends (nothing of a later task seen yet): at insertion the model
has seen the task for less than an epoch, and DER's insertion-time logits then pull the task's
own buffered examples back toward half-learned answers (``LOGIT_RECORD_MODES``).

Every method with replay uses one buffer of ``buffer_size`` examples (Algorithm R over the
training stream, seeded), and each step trains on ``batch_size`` new examples plus up to
``batch_size`` replayed ones. After each task the model is tested on every task's test set:
``R[i, j]`` = accuracy on task j after training task i, and ACC, BWT, forgetting and FWT
follow (:mod:`synclearn.eval.metrics`; FWT against the untrained model's accuracy).

Learning rates: every method of ``METHODS`` gets its own (``DEFAULT_LR[setting][method]``), the one with
the best mean ACC in a sweep over 1e-4 .. 1e-1 on seeds 100-104 -- not the reported seeds
(0, 1, 2, ...) -- at the default epochs, batch size, buffer and budgets
(``experiments/bench_split_digits.py --lrs ...``).

    result = run_split_digits("consolidation", "class", seed=0, out_dir=Path("out"))
    result["acc"], result["R"]

From Hydra, :func:`run` is the benchmark (``synclearn run experiment=split_digits``; the
method follows from the ``learner`` and ``memory`` groups, :func:`hydra_method`).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from synclearn.eval import metrics
from synclearn.learn.batch import LabelBatch, at_least_float32
from synclearn.memory.replay import Reservoir

__all__ = ["DEFAULT_LOGIT_WEIGHT", "DEFAULT_LR", "EWC_METHODS", "LOGIT_RECORD_MODES", "METHODS", "SETTINGS", "TASKS", "DigitsSplit",
           "LogitReplayBatch", "MethodSpec", "StoredLogits", "default_lr", "evaluate_tasks", "hydra_method",
           "load_split_digits", "logit_distillation", "method_spec", "replay_rows", "run", "run_split_digits",
           "task_mask"]


@dataclass(frozen=True)
class MethodSpec:
    """How a method learns: ``update`` family, whether it replays, whether it consolidates,
    whether its replayed examples also keep their recorded logits (``distill``)."""

    update: str
    replay: bool
    consolidate: bool
    distill: bool = False


METHODS: dict[str, MethodSpec] = {
    "naive": MethodSpec("sparse", replay=False, consolidate=False),
    "replay": MethodSpec("sparse", replay=True, consolidate=False),
    "consolidation": MethodSpec("sparse", replay=True, consolidate=True),
    "lora": MethodSpec("lora", replay=False, consolidate=False),
    "lora+replay": MethodSpec("lora", replay=True, consolidate=False),
    "full": MethodSpec("full", replay=False, consolidate=False),
    "full+replay": MethodSpec("full", replay=True, consolidate=False),
    "anchors": MethodSpec("sparse", replay=True, consolidate=False, distill=True),
}
# LoRA/full with consolidation: the EWC penalty (no neurons to lock); see the module docstring.
EWC_METHODS: dict[str, MethodSpec] = {
    "lora+ewc": MethodSpec("lora", replay=False, consolidate=True),
    "lora+replay+ewc": MethodSpec("lora", replay=True, consolidate=True),
    "full+ewc": MethodSpec("full", replay=False, consolidate=True),
    "full+replay+ewc": MethodSpec("full", replay=True, consolidate=True),
}
SETTINGS = ("class", "task")
TASKS: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
# Best mean ACC of the lr sweep (seeds 100-104; 5 epochs, batch 32, buffer 200, 5% neurons, lock 0.1).
DEFAULT_LR: dict[str, dict[str, float]] = {
    "class": {"naive": 3e-4, "replay": 3e-3, "consolidation": 1e-1, "lora": 1e-4, "lora+replay": 1e-3,
              "full": 1e-4, "full+replay": 3e-4, "anchors": 5e-3},
    "task": {"naive": 1e-3, "replay": 3e-3, "consolidation": 1e-2, "lora": 3e-4, "lora+replay": 1e-3,
             "full": 3e-4, "full+replay": 3e-4, "anchors": 3e-3},
}
LOGIT_RECORD_MODES = ("insertion", "task_end")  # when "anchors" records a buffered example's logits
# Logit replay ("anchors"): weight of the MSE toward the recorded logits. Class-IL: swept with its lr on
# seeds 100-104 (logit_record task_end, 5% neurons; lr 2e-3..3e-2 x weight 0.3..10): best mean ACC 0.926 at
# lr 5e-3, weight 2 (insertion-time logits: best 0.874 at lr 3e-3, weight 1). Task-IL: not swept (replay's
# lr, class-IL's weight).
DEFAULT_LOGIT_WEIGHT: dict[str, float] = {"class": 2.0, "task": 2.0}


def method_spec(method: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``method`` (``METHODS`` or ``EWC_METHODS``); raises
    ValueError listing the accepted names."""
    spec = METHODS.get(method) or EWC_METHODS.get(method)
    if spec is None:
        raise ValueError(f"unknown method {method!r}; accepted: {[*METHODS, *EWC_METHODS]}")
    return spec


def default_lr(table: dict[str, float], method: str) -> float:
    """``table[method]``; an ``EWC_METHODS`` method (no tuned rate) gets the rate of the same
    method without ``+ewc``."""
    method_spec(method)
    return table[method] if method in table else table[method.removesuffix("+ewc")]


def hydra_method(update: str, memory: Any, benchmark: str = "split-digits") -> str:
    """The method that a ``learner`` group (its ``update``) and a ``memory`` group (a
    :class:`~synclearn.bench.experiment.MemorySetup`) stand for::

        memory:        none          replay        consolidate (replay + consolidation)   anchors
        sparse         naive         replay        consolidation (lock)                    anchors
        lora           lora          lora+replay   lora+replay+ewc                         -
        full           full          full+replay   full+replay+ewc                         -

    Replay is on when ``memory.replay_ratio > 0`` (the benchmark's reservoir buffer, one
    replayed example per new one), consolidation when ``memory.consolidation`` is set (so
    ``memory=consolidate memory.replay_ratio=0`` gives lora+ewc / full+ewc), logit replay
    (``distill``) when the memory group has anchors (``memory.anchors``, a
    :class:`~synclearn.memory.MemoryManager`'s ``anchor_settings``; their language-model
    settings do not apply: the benchmark's ``logit_weight`` does). Raises
    ValueError naming the problem for a combination the benchmark has no method for, and for
    memory features a task benchmark without an interaction log cannot honour (fading, the
    step journal).
    """
    problems = []
    if getattr(memory, "fading", None) is not None:
        problems.append("memory.fading is set (faded log records leave replay), but the benchmark keeps its own "
                        "replay buffer and no interaction log")
    if getattr(memory, "journal", False):
        problems.append("memory.journal is true (a step journal for exact forgetting), which the benchmark "
                        "does not use")
    replay = float(getattr(memory, "replay_ratio", 0.0)) > 0
    consolidate = getattr(memory, "consolidation", None) is not None
    distill = getattr(memory, "anchor_settings", None) is not None
    key = (update, replay, consolidate, distill)
    found = [name for name, spec in {**METHODS, **EWC_METHODS}.items()
             if (spec.update, spec.replay, spec.consolidate, spec.distill) == key]
    if not problems and not found:
        problems.append(f"learner.update={update!r} with {'replay' if replay else 'no replay'} "
                        f"(memory.replay_ratio={getattr(memory, 'replay_ratio', None)!r}), "
                        f"{'consolidation' if consolidate else 'no consolidation'} and "
                        f"{'anchors' if distill else 'no anchors'} is not a method (sparse consolidation, neuron "
                        "locking, needs replay; anchors, logit replay, need replay, a sparse learner and no "
                        "consolidation)")
    if problems:
        raise ValueError(f"{benchmark}: unsupported learner/memory combination: " + "; ".join(problems)
                         + " (use memory=none, replay, consolidate or anchors)")
    return found[0]


@dataclass(frozen=True)
class DigitsSplit:
    """The digits, split. x_*: [N, 64] float32 (standardized with train statistics); y_*: [N] int64."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    def task_indices(self, classes: tuple[int, ...], train: bool = True) -> np.ndarray:
        """Row indices (ascending) of the examples whose label is in ``classes``."""
        y = (self.y_train if train else self.y_test).numpy()
        return np.flatnonzero(np.isin(y, classes))


def load_split_digits(seed: int = 0, test_fraction: float = 0.25) -> DigitsSplit:
    """Bundled digits (no download), stratified train/test split fixed by ``seed``."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction!r} (expected 0 < test_fraction < 1)")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data.astype(np.float32) / 16.0, digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):  # stratified: the same share of every class is held out
        rows = np.flatnonzero(y == c)
        test[rng.choice(rows, size=round(test_fraction * len(rows)), replace=False)] = True
    mean, std = x[~test].mean(0), x[~test].std(0) + 0.1  # some border pixels are always 0
    x = (x - mean) / std
    def tensor(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    return DigitsSplit(tensor(x[~test]), tensor(y[~test]), tensor(x[test]), tensor(y[test]))


def replay_rows(pool: Reservoir | None, k: int, rng: np.random.Generator) -> np.ndarray:
    """``min(k, held)`` distinct example indices drawn uniformly from the replay reservoir
    (:class:`~synclearn.memory.Reservoir`, the framework's; None: no replay)."""
    k = 0 if pool is None else min(k, len(pool.pool))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    return rng.choice(pool.pool, size=k, replace=False)


class StoredLogits:
    """The logits each training example had when it entered the replay buffer.

    ``logits`` [N, C] float32, one row per training example (NaN until recorded); a row is
    written once, by :meth:`record`, and never again (each example is offered once).
    """

    def __init__(self, n_examples: int, n_classes: int = 10) -> None:
        self.logits = torch.full((n_examples, n_classes), float("nan"))

    @torch.no_grad()
    def record(self, model: torch.nn.Module, x: Tensor, ids: np.ndarray) -> None:
        """Record ``model``'s logits now for the examples ``ids`` (rows of ``x`` [N, d_in])."""
        if len(ids) == 0:
            return
        ids_t = torch.as_tensor(ids, dtype=torch.long)
        self.logits[ids_t] = model(x[ids_t].to(model.device)).float().cpu()

    def offer(self, pool: Reservoir, ids: np.ndarray, rng: np.random.Generator, model: torch.nn.Module,
              x: Tensor) -> np.ndarray:
        """``pool.offer(ids, rng)``, then record the logits of the ids it took; returns them."""
        held = pool.pool.copy()
        pool.offer(ids, rng)
        taken = np.setdiff1d(pool.pool, held)
        self.record(model, x, taken)
        return taken


def logit_distillation(logits: Tensor, stored: Tensor, replayed: Tensor) -> tuple[Tensor, Tensor]:
    """DER's logit-replay term: ``mean over replayed rows of mean_c (logits - stored)^2``.

    Args:
        logits: [B, C] the model's logits now.
        stored: [B, C] the recorded logits (rows that are not replayed are ignored; NaN allowed there).
        replayed: [B] bool, the rows with recorded logits.

    Returns:
        (the term, a scalar: 0 when no row is replayed; per-row squared error [B], 0 where not replayed).
    """
    replayed = replayed.to(logits.device)
    target = torch.where(replayed[:, None], stored.to(logits.device, logits.dtype), logits.detach())
    per_row = (logits - target).pow(2).mean(-1) * replayed  # [B]
    return per_row.sum() / replayed.sum().clamp(min=1), per_row.detach()


@dataclass
class LogitReplayBatch(LabelBatch):
    """A :class:`LabelBatch` whose replayed rows also keep their recorded logits (DER++).

    ``stored`` [B, C] recorded logits (read where ``replayed`` [B] bool is True);
    ``logit_weight`` >= 0. ``loss`` = the label cross entropy of every row +
    ``logit_weight x`` :func:`logit_distillation`.
    """

    stored: Tensor | None = None
    replayed: Tensor | None = None
    logit_weight: float = 1.0

    def loss(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        ce, per_example = super().loss(logits)
        if self.stored is None or self.replayed is None:
            return ce, per_example
        distill, per_row = logit_distillation(at_least_float32(logits), self.stored, self.replayed)
        return ce + self.logit_weight * distill, per_example + self.logit_weight * per_row.to(per_example)


def task_mask(labels: Tensor, n_classes: int = 10) -> Tensor:
    """[B] labels -> [B, C] bool: True on the classes of each example's task.

    Used as ``LabelBatch.allowed``: a batch mixes replayed examples of other tasks, so the
    mask is one row per example (it broadcasts against the [B, C] logits like a [C] mask).
    """
    task_of = torch.tensor([t for c in range(n_classes) for t, cs in enumerate(TASKS) if c in cs])
    cls_task = task_of[None, :]  # [1, C]
    return cls_task == task_of[labels][:, None]


@torch.no_grad()
def evaluate_tasks(model: torch.nn.Module, data: DigitsSplit, setting: str) -> list[float]:
    """Test accuracy on each task, in task order (``setting`` as in the module docstring)."""
    logits = model(data.x_test.to(model.device)).float().cpu()  # [N, 10]
    if setting == "task":
        logits = logits.masked_fill(~task_mask(data.y_test), float("-inf"))
    correct = (logits.argmax(-1) == data.y_test).float()
    return [float(correct[data.task_indices(cs, train=False)].mean()) for cs in TASKS]


def _finite_or_none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def run_split_digits(
    method: str,
    setting: str = "class",
    *,
    seed: int = 0,
    buffer_size: int = 200,
    epochs: int = 5,
    batch_size: int = 32,
    neuron_fraction: float = 0.05,
    lock_fraction: float = 0.1,
    logit_weight: float | None = None,
    logit_record: str = "task_end",
    d_model: int = 64,
    d_ff: int = 256,
    n_layers: int = 2,
    out_dir: str | Path | None = None,
    consolidation: Callable[[Any], Any] | None = None,
    **learner_kw: Any,
) -> dict[str, Any]:
    """Learn the 5 digit tasks in order with ``method`` and measure forgetting.

    Args:
        method: one of ``METHODS`` or ``EWC_METHODS`` (see the module docstring).
        setting: "class" (class-incremental) or "task" (task-incremental).
        seed: seeds the train/test split, the model's initialization, shuffling, the replay
            buffer and the learner's neuron selection; same seed, same result.
        buffer_size: replay buffer capacity (used only by methods that replay).
        epochs: passes over each task's training examples (the same for every method).
        batch_size: new examples per step (replaying methods add up to as many replayed ones).
        neuron_fraction: sparse budget per layer and step (sparse methods).
        lock_fraction: share of each layer's neurons ``Consolidation("lock")`` locks at
            every task boundary ("consolidation").
        logit_weight: weight of the logit-replay term ("anchors"; None:
            ``DEFAULT_LOGIT_WEIGHT[setting]``).
        logit_record: when "anchors" records a buffered example's logits: "insertion" (DER:
            when the buffer takes it) or "task_end" (again when its task ends; the default).
        d_model, d_ff, n_layers: classifier shape.
        consolidation: for consolidating methods, a callable ``learner -> Consolidation``
            used instead of the default (``Consolidation(learner, "lock",
            fraction=lock_fraction)`` for sparse, ``Consolidation(learner, "ewc")`` for
            LoRA/full); it is applied at every task boundary.
        out_dir: if given, ``split_digits_<method>_<setting>_s<seed>.json`` and ``.png``
            (heatmap of R) are written there.
        **learner_kw: more :class:`~synclearn.learn.Learner` arguments (``lr``, when absent
            or None, defaults to ``DEFAULT_LR[setting][method]``, see :func:`default_lr`).

    Returns:
        JSON-ready dict: ``acc``, ``bwt``, ``forgetting``, ``fwt`` (floats, None where
        undefined), ``R`` [T][T], ``baseline`` [T] (untrained accuracy), ``forgetting_curve``
        [T], ``seconds`` (training wall time, evaluation excluded), ``steps`` and the settings used.
    """
    spec = method_spec(method)
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; accepted: {list(SETTINGS)}")
    bad = [f"{n}={v!r}" for n, v in (("epochs", epochs), ("batch_size", batch_size)) if not isinstance(v, int) or v < 1]
    if not isinstance(buffer_size, int) or buffer_size < 0:
        bad.append(f"buffer_size={buffer_size!r}")
    if logit_weight is None:
        logit_weight = DEFAULT_LOGIT_WEIGHT[setting]
    if isinstance(logit_weight, bool) or not isinstance(logit_weight, (int, float)) or not 0 <= logit_weight < math.inf:
        bad.append(f"logit_weight={logit_weight!r} (expected a finite number >= 0)")
    if logit_record not in LOGIT_RECORD_MODES:
        bad.append(f"logit_record={logit_record!r} (expected one of {list(LOGIT_RECORD_MODES)})")
    if bad:
        raise ValueError(f"invalid split-digits settings: {', '.join(bad)} (expected positive integers, "
                         "buffer_size >= 0)")
    from synclearn.model.classifier import SelectableClassifier

    data = load_split_digits(seed)
    model = SelectableClassifier(d_in=64, d_model=d_model, d_ff=d_ff, n_layers=n_layers, n_classes=10, seed=seed)
    if learner_kw.get("lr") is None:
        learner_kw["lr"] = default_lr(DEFAULT_LR[setting], method)
    learner, consolidation = method_learner(model, spec, neuron_fraction=neuron_fraction, seed=seed,
                                            learner_kw=learner_kw, consolidation=consolidation,
                                            lock_fraction=lock_fraction)
    rng = np.random.default_rng(seed)
    pool = Reservoir(buffer_size) if spec.replay and buffer_size > 0 else None  # the stream's replay memory
    stored = StoredLogits(len(data.y_train)) if spec.distill and pool is not None else None  # logit replay

    baseline = evaluate_tasks(model, data, setting)
    rows, steps, skipped, seconds = [], 0, 0, 0.0
    for classes in TASKS:
        idx = data.task_indices(classes)
        t0 = time.perf_counter()
        for epoch in range(epochs):
            order = rng.permutation(idx)
            for start in range(0, len(order), batch_size):
                new = order[start : start + batch_size]
                old = replay_rows(pool, len(new), rng)
                rows_ = np.concatenate([new, old])
                x, y = data.x_train[rows_], data.y_train[rows_]
                allowed = task_mask(y) if setting == "task" else None
                if stored is None:
                    batch = LabelBatch(x, y, allowed=allowed)
                else:
                    replayed = torch.arange(len(rows_)) >= len(new)  # [B]: the rows drawn from the buffer
                    batch = LogitReplayBatch(x, y, allowed=allowed, stored=stored.logits[rows_], replayed=replayed,
                                             logit_weight=float(logit_weight))
                result = learner.step_batch(batch)
                steps, skipped = steps + 1, skipped + int(result.skipped)
                if epoch == 0 and pool is not None:  # the stream offers each example to the buffer once
                    if stored is None:
                        pool.offer(new, rng)
                    else:  # the logits of the examples it takes, as the model is now
                        stored.offer(pool, new, rng, model, data.x_train)
        if stored is not None and logit_record == "task_end":  # this task's buffered examples, as learned
            stored.record(model, data.x_train, np.intersect1d(pool.pool, idx))
        if consolidation is not None:
            if consolidation.policy == "ewc":  # Fisher of this task's loss, then anchor here
                for start in range(0, len(idx), batch_size):
                    y = data.y_train[idx[start : start + batch_size]]
                    observe_fisher(consolidation, LabelBatch(data.x_train[idx[start : start + batch_size]], y,
                                                             allowed=task_mask(y) if setting == "task" else None))
            consolidation.consolidate()
        seconds += time.perf_counter() - t0
        rows.append(evaluate_tasks(model, data, setting))

    R = metrics.accuracy_matrix(rows)
    summary = metrics.summarize(R, baseline=baseline)
    locked = {layer: int(mask.sum()) for layer in learner.plastic_layers if (mask := learner.protected(layer)) is not None}
    result = {
        "benchmark": "split_digits", "method": method, "setting": setting, "seed": seed,
        "update": spec.update, "uses_buffer": spec.replay, "buffer_size": buffer_size if spec.replay else 0,
        "epochs": epochs, "batch_size": batch_size, "lr": learner.lr,
        "neuron_fraction": neuron_fraction if spec.update == "sparse" else None,
        "lock_fraction": consolidation.fraction if consolidation is not None and consolidation.policy == "lock"
        else None,
        "consolidation": consolidation.policy if consolidation is not None else None, "locked_neurons": locked,
        "logit_weight": float(logit_weight) if stored is not None else None,
        "logit_record": logit_record if stored is not None else None,
        **{k: _finite_or_none(v) for k, v in summary.items()},
        "R": R.tolist(), "baseline": baseline,
        "forgetting_curve": [_finite_or_none(v) for v in metrics.forgetting_curve(R)],
        "steps": steps, "skipped_steps": skipped, "seconds": seconds,
        "n_train": len(data.y_train), "n_test": len(data.y_test),
        "definitions": {k: metrics.DEFINITIONS[k] for k in summary},
    }
    if out_dir is not None:
        _write_outputs(result, Path(out_dir), f"split_digits_{method.replace('+', '-')}_{setting}_s{seed}")
    return result


def method_learner(model: torch.nn.Module, spec: MethodSpec, *, neuron_fraction: float, seed: int,
                   learner_kw: dict[str, Any], consolidation: Any, lock_fraction: float) -> tuple[Any, Any]:
    """The learner of a method and its consolidation (None unless the method consolidates):
    ``consolidation`` is a callable ``learner -> Consolidation`` (the memory group's), else the
    method's own: "lock" at ``lock_fraction`` for sparse learners, "ewc" for LoRA/full."""
    from synclearn.learn import Learner
    from synclearn.memory.consolidate import Consolidation

    learner = Learner(model, update=spec.update, neuron_fraction=neuron_fraction, seed=seed, **learner_kw)
    if not spec.consolidate:
        return learner, None
    if consolidation is not None:
        return learner, consolidation(learner)
    return learner, Consolidation(learner, "lock" if spec.update == "sparse" else "ewc", fraction=lock_fraction)


def observe_fisher(consolidation: Any, batch: Any) -> None:
    """Add one batch's squared loss gradients to an EWC ``consolidation``'s running Fisher
    estimate (decayed like its other observations). ``batch`` is any learner batch with a
    ``loss(logits)`` (a :class:`~synclearn.learn.batch.LabelBatch` here: ``Consolidation.observe``
    takes text)."""
    learner = consolidation.learner
    logits = learner.model(batch.inputs.to(learner.model.device))
    loss, _ = batch.loss(logits)
    grads = torch.autograd.grad(loss, learner.params, allow_unused=True)
    for i, g in enumerate(grads):
        if g is not None:
            consolidation.fisher[i].mul_(consolidation.neurons.decay).add_(g.detach().pow(2))


# -- the Hydra benchmark --------------------------------------------------------------------------

def split_learner_settings(learner: dict[str, Any], seed: int, benchmark: str) -> tuple[str, float | None, dict]:
    """(update, neuron_fraction, other Learner arguments) from the learner group's settings as
    :func:`~synclearn.bench.experiment.learner_settings` gives them (constructor arguments; a
    missing one means "the benchmark's default")."""
    settings = dict(learner)
    update = settings.pop("update", "sparse")
    learner_seed = settings.pop("seed", seed)
    if learner_seed != seed:
        raise ValueError(f"{benchmark}: learner.seed={learner_seed!r} differs from seed={seed!r}; the benchmark "
                         "seeds its model, data and learner from `seed` (leave learner.seed=${{seed}})")
    for key in ("journal", "log"):
        settings.pop(key, None)
    return update, settings.pop("neuron_fraction", None), settings


def pinned_consolidation(consolidation: Any, lock_fraction: float | None) -> Any:
    """``memory.consolidation`` (a callable ``learner -> Consolidation``) with its lock fraction
    replaced by ``lock_fraction`` (None: unchanged; no consolidation stays none)."""
    if consolidation is None or lock_fraction is None:
        return consolidation
    return functools.partial(consolidation, fraction=lock_fraction)


def scalars_series_summary(result: dict[str, Any], scalars: tuple[str, ...]) -> dict[str, Any]:
    """The benchmark contract's metrics dict from a ``run_*`` result: the ``scalars`` keys flat
    (None -> nan; what ``synclearn report`` tabulates), ``benchmark`` and ``method`` flat as
    strings, everything else under ``series`` (the settings used under ``series["settings"]``)."""
    out: dict[str, Any] = {k: result[k] for k in ("benchmark", "method") if k in result}
    out.update({k: float("nan") if result.get(k) is None else result[k] for k in scalars})
    series: dict[str, Any] = {"settings": {}}
    for key, value in result.items():
        if key in out:
            continue
        if isinstance(value, (list, dict, tuple)):
            series[key] = value
        else:
            series["settings"][key] = value
    out["series"] = series
    return out


# The flat metrics of the Hydra benchmark (the rest goes under ``series``).
SCALARS = ("acc", "bwt", "forgetting", "fwt", "lr", "steps", "skipped_steps", "seconds")


def run(
    out_dir: str | Path,
    *,
    learner: dict[str, Any],
    memory: Any,
    seed: int = 0,
    progress: bool = False,
    setting: str = "class",
    buffer_size: int = 200,
    epochs: int = 5,
    batch_size: int = 32,
    d_model: int = 64,
    d_ff: int = 256,
    n_layers: int = 2,
    lock_fraction: float | None = None,
    logit_weight: float | None = None,
    logit_record: str = "task_end",
) -> dict[str, Any]:
    """Split-digits as a Hydra benchmark (``conf/benchmark/split_digits.yaml``).

    ``lock_fraction``, when given, replaces ``memory.consolidation``'s lock fraction: the tuned
    learning rates (``DEFAULT_LR``) were found at one lock fraction, so the benchmark pins it
    (``conf/benchmark/split_digits.yaml``) whatever the memory group's default for chat is.
    ``logit_weight`` and ``logit_record`` are the logit replay's of ``memory=anchors`` (weight
    None: the tuned ``DEFAULT_LOGIT_WEIGHT``); the memory group's anchor settings (a KL over recorded tokens of
    chat turns) do not apply to the classifier.

    It builds its own model (``needs_model: false`` in ``conf/benchmark/split_digits.yaml``):
    :func:`~synclearn.bench.experiment.run_experiment` passes the ``learner`` group's settings (the Learner arguments; ``lr: null`` = the tuned
    ``DEFAULT_LR`` of the method) and the ``memory`` group instead of a model and a learner.
    The method follows from ``learner.update`` and the memory group (:func:`hydra_method`);
    consolidation is ``memory.consolidation`` (its policy, lock fraction, EWC strength, decay)
    applied at every task boundary (``memory.consolidate_every`` and ``memory.batch_size`` do
    not apply: the benchmark's own ``batch_size`` and task boundaries do). The replay group
    does not apply either: the buffer is a reservoir.

    Returns the benchmark contract's metrics: flat scalars (``acc``, ``bwt``, ``forgetting``,
    ``fwt``, ``lr``, ``steps``, ``seconds``, ...; strings ``method``, ``setting``), ``series``
    (``R``, ``baseline``, ``forgetting_curve``, ...) and ``summary`` lines; the R heatmap and
    the per-method JSON are written into ``out_dir``.
    """
    del progress  # seconds per run: no progress bar
    update, neuron_fraction, learner_kw = split_learner_settings(learner, seed, "split-digits")
    method = hydra_method(update, memory, "split-digits")
    result = run_split_digits(method, setting, seed=seed, buffer_size=buffer_size, epochs=epochs,
                              batch_size=batch_size, neuron_fraction=0.05 if neuron_fraction is None else neuron_fraction,
                              d_model=d_model, d_ff=d_ff, n_layers=n_layers, out_dir=out_dir,
                              consolidation=pinned_consolidation(memory.consolidation, lock_fraction),
                              logit_weight=logit_weight, logit_record=logit_record, **learner_kw)
    out = scalars_series_summary(result, SCALARS)
    distill = ("" if result["logit_weight"] is None else
               f", logit replay weight {result['logit_weight']:g} recorded at {result['logit_record']}")
    out["summary"] = [
        (f"split-digits {setting}-IL, {method} (update={update}, lr={result['lr']:.3g}, "
        f"{f'replay buffer {buffer_size}' if result['uses_buffer'] else 'no replay'}, "
        f"consolidation={result['consolidation'] or 'none'}{distill}): {result['steps']} steps in "
        f"{result['seconds']:.1f}s"),
        _metrics_line(out),
        "R (rows: after task i; columns: accuracy on task j): "
        + " | ".join(" ".join(f"{v:.2f}" for v in row) for row in result["R"]),
        f"plot: {result['files']['png']}",
    ]
    return out


def _metrics_line(out: dict[str, Any]) -> str:
    def pts(key: str, sign: str = "") -> str:
        v = out.get(key, float("nan"))
        return "n/a" if not isinstance(v, (int, float)) or not math.isfinite(v) else f"{100 * v:{sign}.1f} pts"

    return (f"ACC {out['acc']:.3f}, BWT {pts('bwt', '+')}, forgetting {pts('forgetting')}, "
            f"FWT {pts('fwt', '+')}")


def _write_outputs(result: dict[str, Any], out_dir: Path, stem: str) -> None:
    from synclearn.eval.plots import plot_accuracy_matrix

    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_accuracy_matrix(result["R"], out_dir / f"{stem}.png",
                               task_names=["".join(map(str, cs)) for cs in TASKS],
                               title=f"split-digits {result['setting']}-IL, {result['method']}: "
                                     f"ACC {result['acc']:.3f}")
    result["files"] = {"json": str(out_dir / f"{stem}.json"), "png": str(png)}
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))
