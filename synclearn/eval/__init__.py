"""Evaluation: continual-learning metrics, plots, and the ``synclearn report`` aggregator.

``from synclearn.eval import metrics`` needs only numpy. The plotting functions
(matplotlib) are loaded on first use, so importing this package stays light.
"""

from synclearn.eval import metrics
from synclearn.eval.metrics import (
    DEFINITIONS,
    HalfLifeFit,
    RetentionCurve,
    accuracy_matrix,
    average_accuracy,
    average_forgetting,
    backward_transfer,
    fit_half_life,
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

__all__ = [
    "DEFINITIONS",
    "HalfLifeFit",
    "RetentionCurve",
    "accuracy_matrix",
    "average_accuracy",
    "average_forgetting",
    "backward_transfer",
    "fit_half_life",
    "forgetting_curve",
    "forgetting_per_task",
    "forward_transfer",
    "intransigence",
    "learning_curve_area",
    "metrics",
    "online_accuracy",
    "online_accuracy_curve",
    "retention_by_delay",
    "summarize",
]
