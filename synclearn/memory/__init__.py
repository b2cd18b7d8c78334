"""synclearn.memory: the interaction log and replay.

* ``InteractionLog``: every interaction in one SQLite file (WAL, one writer,
  deletes that really delete). See ``synclearn.memory.log``.
* Replay policies with one signature ``policy(candidates, k, rng, now) -> ids`` and
  ``ReplayBatchBuilder``, which feeds ``Learner.step``. See ``synclearn.memory.replay``.
* ``StepJournal``: undo records of every learning step, for exact forgetting.
* ``Consolidation``: per-neuron importance and the lock / damp / EWC policies.
* ``Fading``: memories below a retention threshold leave replay (and, by policy, the log).
"""

from synclearn.memory.consolidate import Consolidation, NeuronImportance
from synclearn.memory.decay import Fading
from synclearn.memory.journal import StepJournal, StepRecord

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
    Spaced,
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
    "Spaced",
    "weighted_sample",
    "ReplayBatchBuilder",
    "StepJournal",
    "StepRecord",
    "Consolidation",
    "NeuronImportance",
    "Fading",
]
