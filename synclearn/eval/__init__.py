"""Evaluation: continual-learning metrics, plots, and the ``synclearn report`` aggregator.

``from synclearn.eval import metrics`` needs only numpy. The plotting functions
(matplotlib) are loaded on first use, so importing this package stays light.
"""

import importlib

from synclearn.eval import metrics
from synclearn.eval.metrics import (
    DEFINITIONS,
    HalfLifeFit,
    RetentionCurve,
    RetentionFit,
    accuracy_matrix,
    average_accuracy,
    average_forgetting,
    backward_transfer,
    fit_half_life,
    fit_retention,
    forgetting_curve,
    forgetting_per_task,
    forward_transfer,
    intransigence,
    learning_curve_area,
    online_accuracy,
    online_accuracy_curve,
    retention_by_delay,
    summarize,
)
from synclearn.eval.report import aggregate, main as report_main, write_report

_PLOTS = (
    "plot_accuracy_matrix",
    "plot_forgetting_curves",
    "plot_latency",
    "plot_metric_bars",
    "plot_retention_curves",
)


def __getattr__(name: str):
    # Plots import matplotlib (the optional ``eval`` extra) only when first asked for.
    if name == "plots" or name in _PLOTS:
        plots = importlib.import_module("synclearn.eval.plots")  # not `from . import`: that re-enters here
        return plots if name == "plots" else getattr(plots, name)
    raise AttributeError(f"module 'synclearn.eval' has no attribute {name!r}")


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
    "metrics",
    "aggregate",
    "online_accuracy",
    "online_accuracy_curve",
    "retention_by_delay",
    "plot_accuracy_matrix",
    "plot_forgetting_curves",
    "plot_latency",
    "plot_metric_bars",
    "plot_retention_curves",
    "plots",
    "report_main",
    "summarize",
    "write_report",
]
