"""Evaluation plots: each function takes plain arrays or dicts and an output path, writes a PNG.

Figures are built on matplotlib's object API with the Agg canvas (``Figure`` +
``FigureCanvasAgg``), never ``pyplot``: no global figure state, no window, safe
from any thread and on a headless machine. Every function returns the path it
wrote (parent directories are created).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike

from synclearn.eval.metrics import RetentionCurve, RetentionFit, accuracy_matrix

__all__ = [
    "fit_label",
    "plot_accuracy_matrix",
    "plot_forgetting_curves",
    "plot_latency",
    "plot_metric_bars",
    "plot_retention_curves",
]

PathLike = str | os.PathLike

FEW_STEPS = 30  # a latency comparison over fewer learner steps than this says it is weak


def _figure(width: float = 6.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    return path


def _series(x: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def plot_accuracy_matrix(
    R: ArrayLike,
    path: PathLike,
    *,
    task_names: Sequence[str] | None = None,
    title: str = "Accuracy matrix R[i, j]",
) -> Path:
    """Heatmap of ``R`` with every cell annotated.

    Args:
        R: ``[T, T]`` accuracies; rows: after training task i, columns: task j tested.
        path: output PNG.
        task_names: ``T`` labels (default ``0 .. T-1``).
        title: axes title.
    """
    R = accuracy_matrix(R)
    T = R.shape[0]
    names = [str(i) for i in range(T)] if task_names is None else [str(n) for n in task_names]
    if len(names) != T:
        raise ValueError(f"task_names has {len(names)} labels, R has T = {T} tasks")
    side = min(2.5 + 0.6 * T, 14.0)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(R, vmin=0.0, vmax=1.0, cmap="viridis")
    fig.colorbar(im, ax=ax, label="accuracy")
    ax.set_xticks(range(T), names, rotation=45 if T > 8 else 0)
    ax.set_yticks(range(T), names)
    ax.set_xlabel("task j (tested)")
    ax.set_ylabel("after training task i")
    ax.set_title(title)
    if T <= 25:  # beyond that the numbers no longer fit in the cells
        fontsize = max(5.0, 11.0 - 0.3 * T)
        for i in range(T):
            for j in range(T):
                ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=fontsize,
                        color="black" if R[i, j] > 0.6 else "white")
    return _save(fig, path)


def plot_retention_curves(
    curves: Mapping[str, RetentionCurve | tuple[ArrayLike, ArrayLike]],
    path: PathLike,
    *,
    fits: Mapping[str, RetentionFit] | None = None,
    half_lives: Mapping[str, float] | None = None,
    xlabel: str = "delay since taught",
    title: str = "Retention by delay",
) -> Path:
    """Recall rate against delay, one line per method on one axes, with the fitted curves.

    Args:
        curves: method name -> ``RetentionCurve`` (drawn with standard-error bars)
            or ``(delay [K], retention [K])``.
        path: output PNG.
        fits: method name -> ``metrics.fit_retention`` result; drawn dashed in the method's
            colour, its formula and goodness of fit (chi^2 p-value) in the legend, and
            "fit disagrees with the data" there when p < 0.05.
        half_lives: method name -> fitted half-life (the older one-parameter fit through
            1.0 at delay 0); draws ``2^(-t / h)`` dotted (skipped when not finite or not
            positive, or when ``fits`` has the method).
        xlabel: the delay's units.
        title: axes title.
    """
    if not curves:
        raise ValueError("curves is empty; pass at least one method name -> curve")
    fits = dict(fits or {})
    half_lives = dict(half_lives or {})
    unknown = sorted(set(fits) - set(curves))
    if unknown:
        raise ValueError(f"fits for {unknown} have no curve; curves: {sorted(curves)}")
    fig = _figure()
    ax = fig.add_subplot()
    t_max = 0.0
    for name, curve in curves.items():
        if isinstance(curve, RetentionCurve):
            x, y, err = curve.delay, curve.retention, curve.stderr
        else:
            x, y = (_series(a, f"curves[{name!r}]") for a in curve)
            err = None
        if x.shape != y.shape:
            raise ValueError(f"curves[{name!r}]: delay and retention shapes differ, {x.shape} vs {y.shape}")
        keep = np.isfinite(x) & np.isfinite(y)  # empty bins are nan
        line = ax.errorbar(x[keep], y[keep], yerr=None if err is None else err[keep], marker="o",
                           capsize=3, label=name)
        t_max = max(t_max, float(x[keep].max(initial=0.0)))
        t = np.linspace(0.0, max(t_max, 1e-9), 200)
        color = line.lines[0].get_color()
        fit, h = fits.get(name), half_lives.get(name)
        if fit is not None:
            ax.plot(t, fit.retention(t), linestyle="--", color=color, label=f"{name} fit: {fit_label(fit)}")
        elif h is not None and np.isfinite(h) and h > 0:
            ax.plot(t, np.exp2(-t / h), linestyle=":", color=color, label=f"{name} fit 2^(-d/h), h = {h:.3g}")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction recalled")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7 if fits else None)
    return _save(fig, path)


def fit_label(fit: RetentionFit) -> str:
    """The fit's formula and how well it describes the data, for a legend."""
    text = fit.formula()
    if fit.agrees is None:
        return f"{text} (too few delays to test the fit)"
    text += f", chi2/dof {fit.chi2:.3g}/{fit.dof}, p = {fit.p_value:.2g}"
    return text if fit.agrees else text + ": fit disagrees with the data"


def plot_forgetting_curves(
    curves: Mapping[str, ArrayLike],
    path: PathLike,
    *,
    xlabel: str = "after training task k",
    title: str = "Average forgetting over time",
) -> Path:
    """Average forgetting after each step, one line per method.

    Args:
        curves: method name -> ``[T]`` forgetting after each task (e.g.
            ``metrics.forgetting_curve(R)``; the leading ``nan`` is skipped).
        path: output PNG.
        xlabel: x-axis label (the step index is ``0 .. T-1``).
        title: axes title.
    """
    if not curves:
        raise ValueError("curves is empty; pass at least one method name -> curve")
    fig = _figure()
    ax = fig.add_subplot()
    for name, curve in curves.items():
        y = _series(curve, f"curves[{name!r}]")
        x = np.arange(y.size)
        keep = np.isfinite(y)
        ax.plot(x[keep], y[keep], marker="o", label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # groups and tasks are counted, not measured
    ax.axhline(0.0, color="gray", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("average forgetting (Chaudhry et al. 2018)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _intervals(times: np.ndarray, learner_on: ArrayLike) -> list[tuple[float, float]]:
    """``learner_on`` as (start, end) intervals: given as ``[(s, e), ...]`` or a bool mask ``[N]``."""
    on = np.asarray(learner_on)
    if on.ndim == 2 and on.shape[1] == 2:
        return [(float(s), float(e)) for s, e in on]
    if on.shape != times.shape:
        raise ValueError(
            f"learner_on must be (start, end) pairs [K, 2] or a bool mask shaped like times {times.shape}, "
            f"got shape {on.shape}"
        )
    on = on.astype(bool)
    out, start = [], None
    for k in range(on.size):
        if on[k] and start is None:
            start = times[k]
        if not on[k] and start is not None:
            out.append((float(start), float(times[k])))
            start = None
    if start is not None:
        out.append((float(start), float(times[-1])))
    return out


def plot_latency(
    times: ArrayLike,
    latency_ms: ArrayLike,
    path: PathLike,
    *,
    learner_on: ArrayLike | None = None,
    learner_steps: int | None = None,
    xlabel: str = "time (s)",
    title: str = "Per-token latency while learning",
) -> Path:
    """Per-token latency over time, with the spans where the learner ran shaded.

    The title gives the sample counts the comparison rests on: tokens with the learner on
    and off and, with ``learner_steps``, the learner steps taken while serving (under
    :data:`FEW_STEPS` it says that the comparison is weak).

    Args:
        times: ``[N]`` time of each token (seconds since start).
        latency_ms: ``[N]`` latency of each token in milliseconds.
        path: output PNG.
        learner_on: ``[(start, end), ...]`` in the units of ``times``, or a bool mask
            ``[N]``; the title then gives the median latency with the learner on and off.
        learner_steps: learner steps committed during the measurement.
        xlabel: x-axis label.
        title: axes title.
    """
    t = _series(times, "times")
    ms = _series(latency_ms, "latency_ms")
    if t.shape != ms.shape or t.size == 0:
        raise ValueError(f"times and latency_ms must be non-empty and of equal length, got {t.shape} and {ms.shape}")
    if not (np.isfinite(t).all() and np.isfinite(ms).all()):
        raise ValueError("times and latency_ms must be finite (drop tokens without a measurement)")
    fig = _figure(8.0, 3.5)
    ax = fig.add_subplot()
    ax.plot(t, ms, linewidth=0.8, marker=".", markersize=2, label=f"per-token latency ({t.size} tokens)")
    if learner_on is not None:
        spans = _intervals(t, learner_on)
        for k, (s, e) in enumerate(spans):
            ax.axvspan(s, e, color="tab:orange", alpha=0.2, label="learner on" if k == 0 else None)
        on = np.zeros(t.size, dtype=bool)
        for s, e in spans:
            on |= (t >= s) & (t <= e)
        parts = [f"{label} p50 {np.median(ms[sel]):.1f} ms over {int(sel.sum())} tokens"
                 for label, sel in (("on", on), ("off", ~on)) if sel.any()]
        title = f"{title}\n(learner " + ", ".join(parts) + ")"
    if learner_steps is not None:
        weak = learner_steps < FEW_STEPS
        title += f"\n{learner_steps} learner steps while serving" + (": too few for a firm comparison" if weak else "")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("latency per token (ms)")
    ax.set_ylim(bottom=0.0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")  # latency sits well above 0
    return _save(fig, path)


def plot_metric_bars(
    groups: Sequence[str],
    means: Mapping[str, ArrayLike],
    path: PathLike,
    *,
    stds: Mapping[str, ArrayLike] | None = None,
    runs: Sequence[int] | None = None,
    title: str = "Metrics per configuration",
) -> Path:
    """One small bar chart per metric, one bar per group, std as error bars.

    Args:
        groups: ``G`` group labels (e.g. ``"lr=0.1 update=sparse"``).
        means: metric name -> ``[G]`` means (``nan`` is drawn as an empty bar).
        path: output PNG.
        stds: metric name -> ``[G]`` standard deviations (optional).
        runs: ``[G]`` runs (seeds) behind each group; the title then says "mean ± std over
            N seeds" only where N > 1, and "one run each" otherwise.
        title: figure title.
    """
    if not means:
        raise ValueError("means is empty; pass at least one metric name -> [G] values")
    G = len(groups)
    stds = dict(stds or {})
    n = len(means)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = _figure(min(4.0 + 0.5 * G, 8.0) * cols / 1.5, 3.2 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    x = np.arange(G)
    for ax, (name, values) in zip(axes, means.items()):
        y = _series(values, f"means[{name!r}]")
        if y.shape != (G,):
            raise ValueError(f"means[{name!r}] has shape {y.shape}, expected ({G},) (one per group)")
        err = None if name not in stds else np.nan_to_num(_series(stds[name], f"stds[{name!r}]"), nan=0.0)
        ax.bar(x, np.nan_to_num(y, nan=0.0), yerr=err, capsize=3, color=f"C{list(means).index(name) % 10}")
        ax.set_xticks(x, [str(g) for g in groups], rotation=30 if G > 2 else 0, ha="right" if G > 2 else "center",
                      fontsize=8)
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title + _runs_note(runs, G))
    return _save(fig, path)


def _runs_note(runs: Sequence[int] | None, groups: int) -> str:
    if runs is None:
        return ""
    n = [int(r) for r in runs]
    if len(n) != groups:
        raise ValueError(f"runs has {len(n)} entries, expected {groups} (one per group)")
    lo, hi = min(n, default=0), max(n, default=0)
    if hi <= 1:
        return " (one run each)"
    return f" (mean ± std over {hi} seeds)" if lo == hi else f" (mean ± std over {lo}-{hi} seeds)"
