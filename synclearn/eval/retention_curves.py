"""Retention curves: recall by delay since a fact was taught, and the fits that describe them.

* :func:`retention_by_delay`: the fraction recalled per delay (a :class:`RetentionCurve`);
* :func:`fit_half_life`: the one-parameter half-life model r(d) = 2^(-d/h), which assumes recall
  starts at 100% (kept for comparison with earlier runs);
* :func:`fit_retention`: an initial level and a decay, r(d) = a * 2^(-d/h) or a * (1 + d)^(-b),
  whichever has the better likelihood, with a chi-square test of the fit against the binned data
  (:class:`RetentionFit` says when they disagree).

Split out of :mod:`synclearn.eval.metrics` (which re-exports every name here) to keep both
modules readable; the accuracy-matrix metrics stay there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


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
