"""synclearn.memory: the interaction log and replay.

* ``InteractionLog``: every interaction in one SQLite file (WAL, one writer,
  deletes that really delete). See ``synclearn.memory.log``.
* Replay policies with one signature ``policy(candidates, k, rng, now) -> ids`` and
  ``ReplayBatchBuilder``, which feeds ``Learner.step``. See ``synclearn.memory.replay``.
"""

from synclearn.memory.log import (
    INITIAL_STRENGTH_S,
    InteractionLog,
    LogBusyError,
    LogClosedError,
    LogError,
    LogInputError,
    LogNotFoundError,
    LogSchemaError,
    rehearsed_strength,
    retention,
)
from synclearn.memory.replay import (
    Candidates,
    LossPrioritized,
    Policy,
    RecencyWeighted,
    ReplayBatchBuilder,
    Reservoir,
    RetentionAware,
    uniform,
    weighted_sample,
)

__all__ = [
    "InteractionLog",
    "INITIAL_STRENGTH_S",
    "retention",
    "rehearsed_strength",
    "LogError",
    "LogInputError",
    "LogSchemaError",
    "LogBusyError",
    "LogNotFoundError",
    "LogClosedError",
    "Candidates",
    "Policy",
    "uniform",
    "Reservoir",
    "RecencyWeighted",
    "LossPrioritized",
    "RetentionAware",
    "weighted_sample",
    "ReplayBatchBuilder",
]
