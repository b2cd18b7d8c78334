"""Continual-learning metrics, in plain numpy; each function names its definition and paper.

The accuracy matrix ``R`` has shape ``[T, T]``: ``R[i, j]`` is the accuracy on task
``j`` (a fraction in [0, 1]) measured right after training on task ``i``. Row ``i``
is one evaluation pass over all ``T`` tasks; entries above the diagonal are
zero-shot accuracies on tasks not trained yet (needed by FWT).

Undefined values are ``nan``, never an exception: BWT, FWT and forgetting need at
least two tasks, so with ``T == 1`` they return ``nan``. Bad input (wrong shape,
``nan``/``inf``, values outside [0, 1]) raises ``ValueError`` naming the value.

References:
    Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning" (GEM).
    Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning" (RWalk).
    Chaudhry et al. 2019, "Efficient Lifelong Learning with A-GEM" (A-GEM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from synclearn.eval.retention_curves import (  # noqa: F401  (re-exported: the metrics' public names)
    RETENTION_MODELS,
    HalfLifeFit,
    RetentionCurve,
    RetentionFit,
    fit_half_life,
    fit_retention,
    retention_by_delay,
)

__all__ = [
    "DEFINITIONS",
    "HalfLifeFit",
    "RetentionCurve",
    "RetentionFit",
    "accuracy_matrix",
    "average_accuracy",
    "average_forgetting",
    "backward_transfer",
    "fit_half_life",
    "fit_retention",
    "forgetting_curve",
    "forgetting_per_task",
    "forward_transfer",
    "intransigence",
    "learning_curve_area",
    "online_accuracy",
    "online_accuracy_curve",
    "retention_by_delay",
    "summarize",
]

# The definition behind every name that ``summarize`` returns; reports print these.
DEFINITIONS: dict[str, str] = {
    "acc": "ACC = mean_j R[T-1, j] (Lopez-Paz & Ranzato 2017, GEM)",
    "bwt": "BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j]) (Lopez-Paz & Ranzato 2017)",
    "fwt": "FWT = 1/(T-1) sum_{j>0} (R[j-1, j] - b_j), b = untrained model (Lopez-Paz & Ranzato 2017)",
    "forgetting": "F = mean_{j<T-1} (max_{l<T-1} R[l, j] - R[T-1, j]) (Chaudhry et al. 2018, RWalk)",
    "intransigence": "I = mean_k (a*_k - R[k, k]), a* = joint training (Chaudhry et al. 2018, RWalk)",
    "lca": "LCA_beta = 1/(beta+1) sum_{b<=beta} mean_j Z[j, b] (Chaudhry et al. 2019, A-GEM)",
    "online_acc": "mean over the stream of the accuracy on each example before training on it",
    "half_life": "h maximising the Bernoulli likelihood of recall ~ exp(-ln2 * delay / h)",
    "retention_fit": "recall ~ Bernoulli(a * 2^(-d/h)) or Bernoulli(a * (1 + d)^(-b)), the better likelihood; "
                     "fit checked by Pearson chi^2 over the delay bins",
}


def _unit_array(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    """Float copy of ``x`` with ``ndim`` dims, all finite and in [0, 1]; else ValueError."""
    a = np.array(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}{list(idx)} is {a[idx]}; every accuracy must be a finite number in [0, 1]")
    out = (a < 0.0) | (a > 1.0)
    if out.any():
        idx = tuple(int(i) for i in np.argwhere(out)[0])
        raise ValueError(
            f"{name}{list(idx)} = {a[idx]} is outside [0, 1]; accuracies are fractions "
            "(divide percentages by 100)"
        )
    return a


def accuracy_matrix(rows: ArrayLike | Sequence[Sequence[float]]) -> np.ndarray:
    """Validate and return the accuracy matrix.

    Args:
        rows: ``T`` rows of ``T`` accuracies; row ``i`` is measured after training
            on task ``i``, column ``j`` is the task tested.

    Returns:
        ``R``, float64 ``[T, T]`` (a copy).

    Raises:
        ValueError: not square, empty, non-finite, or outside [0, 1].
    """
    R = _unit_array(rows, "R", 2)
    if R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"R must be square [T, T] with T >= 1 (row i: after task i), got shape {R.shape}")
    return R


def _task_vector(x: ArrayLike, name: str, T: int) -> np.ndarray:
    v = _unit_array(x, name, 1)
    if v.shape != (T,):
        raise ValueError(f"{name} must have one entry per task, shape ({T},), got {v.shape}")
    return v


def average_accuracy(R: ArrayLike) -> float:
    """ACC = mean_j R[T-1, j]: final accuracy over all tasks (Lopez-Paz & Ranzato 2017, GEM).

    Args:
        R: accuracy matrix ``[T, T]``.
    """
    R = accuracy_matrix(R)
    return float(R[-1].mean())


def backward_transfer(R: ArrayLike) -> float:
    """BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j]) (Lopez-Paz & Ranzato 2017, GEM).

    Negative BWT is forgetting. ``nan`` when ``T == 1``.

    Args:
        R: accuracy matrix ``[T, T]``.
    """
    R = accuracy_matrix(R)
    T = R.shape[0]
    if T < 2:
        return math.nan
    return float(np.mean(R[-1, :-1] - np.diag(R)[:-1]))


def forward_transfer(R: ArrayLike, baseline: ArrayLike) -> float:
    """FWT = 1/(T-1) sum_{j>0} (R[j-1, j] - b_j) (Lopez-Paz & Ranzato 2017, GEM).

    Zero-shot accuracy on each task just before training on it, relative to the
    untrained (random-init) model. ``nan`` when ``T == 1``.

    Args:
        R: accuracy matrix ``[T, T]``.
        baseline: ``b``, accuracies of the untrained model on each task, ``[T]``.
    """
    R = accuracy_matrix(R)
    T = R.shape[0]
    b = _task_vector(baseline, "baseline", T)
    if T < 2:
        return math.nan
    j = np.arange(1, T)
    return float(np.mean(R[j - 1, j] - b[1:]))


def forgetting_per_task(R: ArrayLike, k: int | None = None) -> np.ndarray:
    """f_j^k = max_{l<k} R[l, j] - R[k, j] for each j < k (Chaudhry et al. 2018, RWalk).

    The max runs over every earlier row, as in the paper (including rows before
    task ``j`` was trained).

    Args:
        R: accuracy matrix ``[T, T]``.
        k: the step after which forgetting is measured, ``1 <= k < T``; default ``T - 1``.

    Returns:
        ``[k]`` float64, forgetting of tasks ``0 .. k-1`` (empty when ``T == 1``).
    """
    R = accuracy_matrix(R)
    T = R.shape[0]
    if k is None:
        k = T - 1
    if not isinstance(k, (int, np.integer)) or not 0 <= k < T:
        raise ValueError(f"k must be an int step in [0, {T - 1}], got {k!r}")
    if k == 0:
        return np.zeros(0)
    return R[:k, :k].max(axis=0) - R[k, :k]


def average_forgetting(R: ArrayLike) -> float:
    """F = mean_{j<T-1} f_j^{T-1}, forgetting after the last task (Chaudhry et al. 2018, RWalk).

    ``nan`` when ``T == 1``. See ``forgetting_per_task`` for ``f_j``.

    Args:
        R: accuracy matrix ``[T, T]``.
    """
    f = forgetting_per_task(R)
    return float(f.mean()) if f.size else math.nan


def forgetting_curve(R: ArrayLike) -> np.ndarray:
    """Average forgetting after each step: F_k = mean_{j<k} f_j^k (Chaudhry et al. 2018).

    Args:
        R: accuracy matrix ``[T, T]``.

    Returns:
        ``[T]`` float64; entry ``k`` is forgetting after training task ``k``;
        entry 0 is ``nan`` (nothing to forget yet).
    """
    R = accuracy_matrix(R)
    T = R.shape[0]
    curve = np.full(T, math.nan)
    for k in range(1, T):
        curve[k] = forgetting_per_task(R, k).mean()
    return curve


def intransigence(R: ArrayLike, reference: ArrayLike) -> np.ndarray:
    """I_k = a*_k - R[k, k]: inability to learn task k (Chaudhry et al. 2018, RWalk).

    Args:
        R: accuracy matrix ``[T, T]``.
        reference: ``a*``, accuracy of a model trained jointly on all tasks
            (multi-task reference), one per task, ``[T]``.

    Returns:
        ``[T]`` float64; average it for a single number.
    """
    R = accuracy_matrix(R)
    a_star = _task_vector(reference, "reference", R.shape[0])
    return a_star - np.diag(R)


def learning_curve_area(Z: ArrayLike, beta: int | None = None) -> float:
    """LCA_beta = 1/(beta+1) sum_{b=0..beta} mean_j Z[j, b] (Chaudhry et al. 2019, A-GEM).

    Args:
        Z: ``[T, B]`` accuracies; ``Z[j, b]`` is the accuracy on task ``j`` after
            ``b`` mini-batches of it (column 0: zero-shot, before any).
        beta: the last mini-batch counted, ``0 <= beta < B``; default ``B - 1``.
    """
    Z = _unit_array(Z, "Z", 2)
    if Z.shape[0] == 0 or Z.shape[1] == 0:
        raise ValueError(f"Z must be [T, B] with T, B >= 1, got shape {Z.shape}")
    if beta is None:
        beta = Z.shape[1] - 1
    if not isinstance(beta, (int, np.integer)) or not 0 <= beta < Z.shape[1]:
        raise ValueError(f"beta must be an int in [0, {Z.shape[1] - 1}] (Z has {Z.shape[1]} columns), got {beta!r}")
    return float(Z[:, : beta + 1].mean(axis=0).mean())


def online_accuracy(correct: ArrayLike) -> float:
    """Online accuracy: mean accuracy on each example before training on it.

    Args:
        correct: ``[N]`` in [0, 1], in stream order: 1/0 for right/wrong, or a
            per-example accuracy (e.g. token accuracy of the reply).
    """
    c = _unit_array(correct, "correct", 1)
    if c.size == 0:
        raise ValueError("correct is empty; online accuracy needs at least one example")
    return float(c.mean())


def online_accuracy_curve(correct: ArrayLike) -> np.ndarray:
    """Running online accuracy: entry n is the mean of ``correct[:n + 1]``, ``[N]``."""
    c = _unit_array(correct, "correct", 1)
    return np.cumsum(c) / np.arange(1, c.size + 1)


def summarize(
    R: ArrayLike,
    baseline: ArrayLike | None = None,
    reference: ArrayLike | None = None,
    Z: ArrayLike | None = None,
    beta: int | None = None,
) -> dict[str, float]:
    """Every scalar metric the inputs allow, keyed as in ``DEFINITIONS``.

    Args:
        R: accuracy matrix ``[T, T]``.
        baseline: untrained-model accuracies ``[T]``; adds ``fwt``.
        reference: joint-training accuracies ``[T]``; adds ``intransigence`` (mean).
        Z: zero-to-few-shot curves ``[T, B]``; adds ``lca`` (with ``beta``).

    Returns:
        ``{"acc", "bwt", "forgetting"[, "fwt", "intransigence", "lca"]}``, floats
        (``nan`` where undefined, e.g. ``T == 1``).
    """
    R = accuracy_matrix(R)
    out = {"acc": average_accuracy(R), "bwt": backward_transfer(R), "forgetting": average_forgetting(R)}
    if baseline is not None:
        out["fwt"] = forward_transfer(R, baseline)
    if reference is not None:
        out["intransigence"] = float(intransigence(R, reference).mean())
    if Z is not None:
        out["lca"] = learning_curve_area(Z, beta)
    return out
