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

Every method with replay uses one buffer of ``buffer_size`` examples (Algorithm R over the
training stream, seeded), and each step trains on ``batch_size`` new examples plus up to
``batch_size`` replayed ones. After each task the model is tested on every task's test set:
``R[i, j]`` = accuracy on task j after training task i, and ACC, BWT, forgetting and FWT
follow (:mod:`synclearn.eval.metrics`; FWT against the untrained model's accuracy).

Learning rates: every method gets its own (``DEFAULT_LR[setting][method]``), the one with
the best mean ACC in a sweep over 1e-4 .. 1e-1 on seeds 100-104 -- not the reported seeds
(0, 1, 2, ...) -- at the default epochs, batch size, buffer and budgets
(``experiments/bench_split_digits.py --lrs ...``).

    result = run_split_digits("consolidation", "class", seed=0, out_dir=Path("out"))
    result["acc"], result["R"]
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from synclearn.eval import metrics

__all__ = ["DEFAULT_LR", "METHODS", "SETTINGS", "TASKS", "DigitsSplit", "MethodSpec", "ReservoirBuffer",
           "evaluate_tasks", "load_split_digits", "method_spec", "run_split_digits", "task_mask"]


@dataclass(frozen=True)
class MethodSpec:
    """How a method learns: ``update`` family, whether it replays, whether it consolidates."""

    update: str
    replay: bool
    consolidate: bool


METHODS: dict[str, MethodSpec] = {
    "naive": MethodSpec("sparse", replay=False, consolidate=False),
    "replay": MethodSpec("sparse", replay=True, consolidate=False),
    "consolidation": MethodSpec("sparse", replay=True, consolidate=True),
    "lora": MethodSpec("lora", replay=False, consolidate=False),
    "lora+replay": MethodSpec("lora", replay=True, consolidate=False),
    "full": MethodSpec("full", replay=False, consolidate=False),
    "full+replay": MethodSpec("full", replay=True, consolidate=False),
}
SETTINGS = ("class", "task")
TASKS: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
# Best mean ACC of the lr sweep (seeds 100-104; 5 epochs, batch 32, buffer 200, 5% neurons, lock 0.1).
DEFAULT_LR: dict[str, dict[str, float]] = {
    "class": {"naive": 3e-4, "replay": 3e-3, "consolidation": 1e-1, "lora": 1e-4, "lora+replay": 1e-3,
              "full": 1e-4, "full+replay": 3e-4},
    "task": {"naive": 1e-3, "replay": 3e-3, "consolidation": 1e-2, "lora": 3e-4, "lora+replay": 1e-3,
             "full": 3e-4, "full+replay": 3e-4},
}


def method_spec(method: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``method``; raises ValueError listing the accepted names."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; accepted: {list(METHODS)}")
    return METHODS[method]


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


class ReservoirBuffer:
    """A bounded replay memory of example indices (Algorithm R, Vitter 1985): after ``seen``
    offers, each offered index is held with probability ``capacity / seen``.

    Args:
        capacity: most indices held (0: the buffer stays empty).
        rng: the only randomness (a seeded ``numpy.random.Generator``).
    """

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        if not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity={capacity!r} (expected an integer >= 0)")
        self.capacity, self.rng, self.seen = capacity, rng, 0
        self.items: list[int] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, indices: np.ndarray | list[int]) -> None:
        for i in indices:
            self.seen += 1
            if len(self.items) < self.capacity:
                self.items.append(int(i))
            else:
                j = int(self.rng.integers(self.seen))
                if j < self.capacity:
                    self.items[j] = int(i)

    def sample(self, k: int) -> np.ndarray:
        """``min(k, len(self))`` distinct held indices, uniformly."""
        k = min(k, len(self.items))
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self.items, dtype=np.int64)[self.rng.choice(len(self.items), size=k, replace=False)]


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
    d_model: int = 64,
    d_ff: int = 256,
    n_layers: int = 2,
    out_dir: str | Path | None = None,
    **learner_kw: Any,
) -> dict[str, Any]:
    """Learn the 5 digit tasks in order with ``method`` and measure forgetting.

    Args:
        method: one of ``METHODS`` (see the module docstring).
        setting: "class" (class-incremental) or "task" (task-incremental).
        seed: seeds the train/test split, the model's initialization, shuffling, the replay
            buffer and the learner's neuron selection; same seed, same result.
        buffer_size: replay buffer capacity (used only by methods that replay).
        epochs: passes over each task's training examples (the same for every method).
        batch_size: new examples per step (replaying methods add up to as many replayed ones).
        neuron_fraction: sparse budget per layer and step (sparse methods).
        lock_fraction: share of each layer's neurons ``Consolidation("lock")`` locks at
            every task boundary ("consolidation").
        d_model, d_ff, n_layers: classifier shape.
        out_dir: if given, ``split_digits_<method>_<setting>_s<seed>.json`` and ``.png``
            (heatmap of R) are written there.
        **learner_kw: more :class:`~synclearn.learn.Learner` arguments (``lr`` defaults to
            ``DEFAULT_LR[setting][method]``).

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
    if bad:
        raise ValueError(f"invalid split-digits settings: {', '.join(bad)} (expected positive integers, "
                         "buffer_size >= 0)")
    from synclearn.learn import Learner
    from synclearn.learn.batch import LabelBatch
    from synclearn.memory.consolidate import Consolidation
    from synclearn.model.classifier import SelectableClassifier

    data = load_split_digits(seed)
    model = SelectableClassifier(d_in=64, d_model=d_model, d_ff=d_ff, n_layers=n_layers, n_classes=10, seed=seed)
    learner_kw.setdefault("lr", DEFAULT_LR[setting][method])
    learner = Learner(model, update=spec.update, neuron_fraction=neuron_fraction, seed=seed, **learner_kw)
    consolidation = Consolidation(learner, "lock", fraction=lock_fraction) if spec.consolidate else None
    rng = np.random.default_rng(seed)
    buffer = ReservoirBuffer(buffer_size if spec.replay else 0, rng)

    baseline = evaluate_tasks(model, data, setting)
    rows, steps, skipped, seconds = [], 0, 0, 0.0
    for classes in TASKS:
        idx = data.task_indices(classes)
        t0 = time.perf_counter()
        for epoch in range(epochs):
            order = rng.permutation(idx)
            for start in range(0, len(order), batch_size):
                new = order[start : start + batch_size]
                rows_ = np.concatenate([new, buffer.sample(len(new))])
                x, y = data.x_train[rows_], data.y_train[rows_]
                allowed = task_mask(y) if setting == "task" else None
                result = learner.step_batch(LabelBatch(x, y, allowed=allowed))
                steps, skipped = steps + 1, skipped + int(result.skipped)
                if epoch == 0:  # the stream offers each example to the buffer once
                    buffer.add(new)
        if consolidation is not None:
            consolidation.consolidate()
        seconds += time.perf_counter() - t0
        rows.append(evaluate_tasks(model, data, setting))

    R = metrics.accuracy_matrix(rows)
    summary = metrics.summarize(R, baseline=baseline)
    locked = {int(k): int(v.sum()) for k, v in learner.locked.items()}
    result = {
        "benchmark": "split_digits", "method": method, "setting": setting, "seed": seed,
        "update": spec.update, "uses_buffer": spec.replay, "buffer_size": buffer_size if spec.replay else 0,
        "epochs": epochs, "batch_size": batch_size, "lr": learner.lr,
        "neuron_fraction": neuron_fraction if spec.update == "sparse" else None,
        "lock_fraction": lock_fraction if spec.consolidate else None, "locked_neurons": locked,
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


def _write_outputs(result: dict[str, Any], out_dir: Path, stem: str) -> None:
    from synclearn.eval.plots import plot_accuracy_matrix

    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_accuracy_matrix(result["R"], out_dir / f"{stem}.png",
                               task_names=["".join(map(str, cs)) for cs in TASKS],
                               title=f"split-digits {result['setting']}-IL, {result['method']}: "
                                     f"ACC {result['acc']:.3f}")
    result["files"] = {"json": str(out_dir / f"{stem}.json"), "png": str(png)}
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))
