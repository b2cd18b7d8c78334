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
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

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


@dataclass(frozen=True)
class RetentionCurve:
    """Fraction of probes recalled, by delay since the fact was taught.

    Attributes:
        delay: ``[K]`` mean delay of the observations in each bin (``nan`` if empty).
        retention: ``[K]`` fraction recalled per bin (``nan`` if empty).
        count: ``[K]`` observations per bin.
        stderr: ``[K]`` binomial standard error ``sqrt(p (1 - p) / n)`` (``nan`` if empty).
        edges: ``[K + 1]`` bin edges; bin k is ``[edges[k], edges[k+1])``, the last
            one closed. For ``bins="unique"`` the edges are midpoints between delays.
    """

    delay: np.ndarray
    retention: np.ndarray
    count: np.ndarray
    stderr: np.ndarray
    edges: np.ndarray


@dataclass(frozen=True)
class HalfLifeFit:
    """Maximum-likelihood half-life of ``recall ~ Bernoulli(exp(-ln2 * delay / h))``.

    Attributes:
        half_life: ``h`` in the delay's units; ``inf`` when nothing was forgotten,
            ``0.0`` when nothing was recalled after a positive delay, ``nan`` when
            no observation is usable (only failures at delay 0).
        stderr: delta-method standard error of ``h`` from the observed Fisher
            information (``nan`` at the ``inf`` / ``0`` boundaries).
        log_likelihood: at the estimate.
        n: observations used in the fit.
        note: empty for an interior fit; otherwise why ``h`` is at a boundary and
            which observations were left out.
    """

    half_life: float
    stderr: float
    log_likelihood: float
    n: int
    note: str = ""

    def retention(self, delay: ArrayLike) -> np.ndarray:
        """The fitted curve ``exp(-ln2 * delay / h)`` at ``delay`` (any shape)."""
        t = np.asarray(delay, dtype=np.float64)
        if self.half_life == 0.0:
            return np.where(t > 0, 0.0, 1.0)
        return np.exp(-math.log(2.0) * t / self.half_life)


def _observations(delays: ArrayLike, recalled: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    d = np.array(delays, dtype=np.float64)
    y = np.array(recalled, dtype=np.float64)
    if d.ndim != 1 or d.shape != y.shape:
        raise ValueError(f"delays and recalled must be 1-D of equal length, got shapes {d.shape} and {y.shape}")
    if d.size == 0:
        raise ValueError("no observations: delays and recalled are empty")
    bad = ~np.isfinite(d) | (d < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"delays[{i}] = {d[i]}; delays must be finite and >= 0")
    bad = (y != 0) & (y != 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"recalled[{i}] = {y[i]}; recalled must be 0/1 (or bool)")
    return d, y


def retention_by_delay(
    delays: ArrayLike, recalled: ArrayLike, bins: int | ArrayLike | str = "unique"
) -> RetentionCurve:
    """Per-fact retention curve: the recall rate by delay bin.

    Args:
        delays: ``[N]`` delay since each fact was taught (turns, steps or seconds), ``>= 0``.
        recalled: ``[N]`` 1 if the probe was answered correctly, else 0.
        bins: ``"unique"`` (one bin per distinct delay, for teach-at-t probe-at-t+k
            streams), an int (equal-width bins over ``[0, max delay]``), or ``[K + 1]``
            increasing edges that cover every delay.

    Returns:
        ``RetentionCurve`` with ``K`` bins.
    """
    d, y = _observations(delays, recalled)
    if isinstance(bins, str):
        if bins != "unique":
            raise ValueError(f"bins must be 'unique', an int or a sequence of edges, got {bins!r}")
        values, idx = np.unique(d, return_inverse=True)
        mids = (values[1:] + values[:-1]) / 2
        edges = np.concatenate([values[:1], mids, values[-1:]])
    else:
        if isinstance(bins, (int, np.integer)):
            if bins < 1:
                raise ValueError(f"bins must be >= 1, got {bins}")
            edges = np.linspace(0.0, max(float(d.max()), 1e-12), int(bins) + 1)
        else:
            edges = np.array(bins, dtype=np.float64)
            if edges.ndim != 1 or edges.size < 2 or not (np.diff(edges) > 0).all():
                raise ValueError(f"bin edges must be 1-D, strictly increasing, at least 2 values; got {edges}")
            outside = (d < edges[0]) | (d > edges[-1])
            if outside.any():
                i = int(np.argmax(outside))
                raise ValueError(f"delays[{i}] = {d[i]} is outside the bin edges [{edges[0]}, {edges[-1]}]")
        idx = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, edges.size - 2)
    K = edges.size - 1
    count = np.bincount(idx, minlength=K)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.bincount(idx, weights=y, minlength=K) / count
        delay = np.bincount(idx, weights=d, minlength=K) / count
        stderr = np.sqrt(p * (1 - p) / count)
    return RetentionCurve(delay=delay, retention=p, count=count, stderr=stderr, edges=edges)


def fit_half_life(delays: ArrayLike, recalled: ArrayLike) -> HalfLifeFit:
    """Maximum-likelihood half-life of an exponential forgetting curve.

    Model: ``P(recall | t) = exp(-lam * t)`` with ``lam = ln2 / h``. The log-likelihood
    ``-lam * sum_{recalled} t + sum_{forgotten} log(1 - exp(-lam * t))`` is concave in
    ``lam``; its score is monotone, so the root is found by bisection on ``log lam``.
    Never raises on degenerate data: all recalled gives ``h = inf``, nothing recalled
    after a positive delay gives ``h = 0``, each with a ``note``. Failures at delay 0
    are impossible under the model and are left out of the fit (counted in the note).

    Args:
        delays: ``[N]`` delay since each fact was taught, ``>= 0``.
        recalled: ``[N]`` 1/0.

    Returns:
        ``HalfLifeFit``; ``half_life`` in the units of ``delays``.
    """
    d, y = _observations(delays, recalled)
    notes = []
    impossible = (y == 0) & (d == 0)
    if impossible.any():
        notes.append(f"left out {int(impossible.sum())} failure(s) at delay 0 (probability 0 under the model)")
        d, y = d[~impossible], y[~impossible]
    n = int(d.size)
    if n == 0:
        return HalfLifeFit(math.nan, math.nan, 0.0, 0, "; ".join(["no usable observations", *notes]))
    S = float(d[y == 1].sum())  # total delay of recalled probes
    F = d[(y == 0) & (d > 0)]  # delays of forgotten probes
    if F.size == 0:
        notes.insert(0, "no failure after a positive delay: no forgetting observed, half-life is inf")
        return HalfLifeFit(math.inf, math.nan, 0.0, n, "; ".join(notes))
    if S == 0.0:
        notes.insert(0, "no recall after a positive delay: everything forgotten at once, half-life is 0")
        return HalfLifeFit(0.0, math.nan, 0.0, n, "; ".join(notes))

    def score(lam: float) -> float:  # d loglik / d lam, strictly decreasing
        with np.errstate(over="ignore"):
            return float((F / np.expm1(lam * F)).sum()) - S

    lo = hi = 1.0 / float(d[d > 0].mean())
    while score(lo) <= 0:
        lo /= 2.0
    while score(hi) >= 0:
        hi *= 2.0
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if score(mid) > 0:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1.0 < 1e-13:
            break
    lam = math.sqrt(lo * hi)
    x = lam * F
    loglik = -lam * S + float(np.log(-np.expm1(-x)).sum())
    info = float((F**2 / (np.expm1(x) * -np.expm1(-x))).sum())  # observed Fisher information in lam
    h = math.log(2.0) / lam
    stderr = h / lam / math.sqrt(info) if info > 0 else math.nan
    return HalfLifeFit(h, stderr, loglik, n, "; ".join(notes))


@dataclass(frozen=True)
class RetentionFit:
    """A forgetting curve with an initial level and a decay, fitted by maximum likelihood.

    ``model`` is ``"exponential"``, ``r(d) = a * 2^(-d / h)`` (``decay`` = the half-life
    ``h``), or ``"power"``, ``r(d) = a * (1 + d)^(-b)`` (``decay`` = the exponent ``b``, the
    shape fact-acquisition studies report). ``a`` in (0, 1] is the recall right after teaching.

    Attributes:
        model: which curve. level: ``a``. decay: ``h`` or ``b``.
        log_likelihood: Bernoulli log-likelihood at the estimate. n: observations.
        chi2, dof, p_value: Pearson goodness of fit over the delay bins (observed recalls
            against ``n_k * r(d_k)``; ``dof`` = bins - 2); ``nan`` with fewer than 3 bins.
        alternatives: model name -> log-likelihood of every curve tried.
        note: why the fit is at a boundary or untestable; empty otherwise.
    """

    model: str
    level: float
    decay: float
    log_likelihood: float
    n: int
    chi2: float
    dof: int
    p_value: float
    alternatives: dict
    note: str = ""

    def retention(self, delay: ArrayLike) -> np.ndarray:
        """The fitted curve at ``delay`` (any shape)."""
        return self.level * _shape(self.model, self.decay, np.asarray(delay, dtype=np.float64))

    @property
    def agrees(self) -> bool | None:
        """Whether the data are consistent with the curve (p >= 0.05); None when untestable."""
        return None if not math.isfinite(self.p_value) else self.p_value >= 0.05

    def formula(self) -> str:
        """The fitted curve as text, e.g. ``0.93 * 2^(-d/410)``."""
        if self.model == "exponential":
            return f"{self.level:.2g} * 2^(-d/{self.decay:.3g})"
        return f"{self.level:.2g} * (1+d)^(-{self.decay:.2g})"


RETENTION_MODELS = ("exponential", "power")


def _shape(model: str, decay: float, d: np.ndarray) -> np.ndarray:
    if model == "exponential":
        return np.exp2(-d / decay) if decay > 0 else np.where(d > 0, 0.0, 1.0)
    return (1.0 + d) ** (-decay) if math.isfinite(decay) else np.where(d > 0, 0.0, 1.0)


def _bernoulli_loglik(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-300, 1.0)
    with np.errstate(divide="ignore"):
        failed = np.where(y == 0, np.log1p(-np.minimum(p, 1.0 - 1e-16)), 0.0)
    return float(np.sum(np.where(y == 1, np.log(p), 0.0) + failed))


def _best_level(g: np.ndarray, y: np.ndarray) -> float:
    """argmax_a of the Bernoulli likelihood of ``y ~ a * g``, a in (0, 1] (concave: bisection)."""
    k = float(y.sum())
    if k == 0:
        return 0.0
    fail = g[y == 0]
    if fail.size == 0:
        return 1.0

    def score(a: float) -> float:  # d loglik / d a, decreasing
        return k / a - float(np.sum(fail / np.maximum(1.0 - a * fail, 1e-300)))

    hi = 1.0 / float(g.max())
    if score(min(hi, 1.0) * (1 - 1e-12)) >= 0:
        return min(hi, 1.0)
    lo, hi = 0.0, min(hi, 1.0)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if score(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def _fit_one(model: str, d: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(level, decay, loglik): profile likelihood over the decay on a log grid, then golden section."""
    positive = d[d > 0]
    span = (float(positive.min()), float(d.max())) if positive.size else (1.0, 1.0)
    if model == "exponential":
        lo, hi = math.log(span[0] / 100), math.log(span[1] * 1e4)
    else:
        lo, hi = math.log(1e-4), math.log(20.0)

    def profile(log_decay: float) -> tuple[float, float]:
        g = _shape(model, math.exp(log_decay), d)
        a = _best_level(g, y)
        return _bernoulli_loglik(a * g, y), a

    grid = np.linspace(lo, hi, 121)
    values = [profile(x)[0] for x in grid]
    i = int(np.argmax(values))
    a_, b_ = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):  # golden section on the bracket around the best grid point
        c, e = b_ - ratio * (b_ - a_), a_ + ratio * (b_ - a_)
        if profile(c)[0] >= profile(e)[0]:
            b_ = e
        else:
            a_ = c
    x = (a_ + b_) / 2
    loglik, level = profile(x)
    if values[i] > loglik:  # the grid point is (at the boundary) no worse
        x = grid[i]
        loglik, level = profile(x)
    return level, math.exp(x), loglik


def _chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for X ~ chi^2(dof): the regularized upper incomplete gamma Q(dof/2, x/2)."""
    s, z = dof / 2.0, x / 2.0
    if z <= 0:
        return 1.0
    log_front = s * math.log(z) - z - math.lgamma(s)
    if z < s + 1:  # series for P(s, z)
        term = total = 1.0 / s
        n = s
        for _ in range(1000):
            n += 1
            term *= z / n
            total += term
            if term < total * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    b, c, dd = z + 1 - s, 1e300, 1 / (z + 1 - s)  # continued fraction for Q(s, z) (modified Lentz)
    h = dd
    for i in range(1, 1000):
        an = -i * (i - s)
        b += 2
        dd = an * dd + b
        dd = 1 / (dd if abs(dd) > 1e-300 else 1e-300)
        c = b + an / c
        c = c if abs(c) > 1e-300 else 1e-300
        h *= dd * c
        if abs(dd * c - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)


def fit_retention(delays: ArrayLike, recalled: ArrayLike, *, model: str = "auto",
                  bins: int | ArrayLike | str = "unique") -> RetentionFit:
    """Fit a forgetting curve with an initial level and a decay to probe outcomes.

    ``recall ~ Bernoulli(r(d))`` with ``r(d) = a * 2^(-d/h)`` (exponential) or
    ``r(d) = a * (1 + d)^(-b)`` (power law); ``a`` is not forced to 1, so a learner that
    recalls 60% right after teaching and keeps it is described as level 0.6, slow decay.
    Both curves have two parameters, so ``model="auto"`` keeps the one with the higher
    likelihood. The fit is then tested against the binned data (:func:`retention_by_delay`
    with ``bins``): Pearson chi^2 of observed vs expected recalls per bin, ``dof`` = bins - 2.

    Args:
        delays: ``[N]`` delay since each fact was taught, ``>= 0``.
        recalled: ``[N]`` 1/0.
        model: ``"auto"``, ``"exponential"`` or ``"power"``.
        bins: the bins of the goodness-of-fit test.

    Returns:
        ``RetentionFit``.
    """
    if model != "auto" and model not in RETENTION_MODELS:
        raise ValueError(f"model={model!r}; expected 'auto' or one of {RETENTION_MODELS}")
    d, y = _observations(delays, recalled)
    notes = []
    names = RETENTION_MODELS if model == "auto" else (model,)
    if y.sum() == 0 or y.sum() == y.size:  # boundaries: no decay can be measured
        level = float(y[0])
        decay = math.inf if model != "power" else 0.0
        tried = {m: (level, decay, 0.0) for m in names}
        notes.append("nothing was recalled: level 0" if level == 0 else "everything was recalled: no decay observed")
    else:
        tried = {m: _fit_one(m, d, y) for m in names}
    best = max(tried, key=lambda m: tried[m][2])
    level, decay, loglik = tried[best]
    curve = retention_by_delay(d, y, bins)
    keep = curve.count > 0
    n_k, x_k = curve.count[keep], curve.delay[keep]
    observed = curve.retention[keep] * n_k
    expected = n_k * level * _shape(best, decay, x_k)
    var = expected * (1 - expected / n_k)
    dof = int(keep.sum()) - 2
    if dof < 1:
        chi2, p = math.nan, math.nan
        notes.append(f"{int(keep.sum())} delay bin(s): too few to test the fit")
    else:
        chi2 = float(np.sum(np.where(var > 0, (observed - expected) ** 2 / np.maximum(var, 1e-12),
                                     np.where(np.isclose(observed, expected), 0.0, np.inf))))
        p = _chi2_sf(chi2, dof) if math.isfinite(chi2) else 0.0
    return RetentionFit(best, level, decay, loglik, int(d.size), chi2, dof, p,
                        {m: v[2] for m, v in tried.items()}, "; ".join(notes))


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
