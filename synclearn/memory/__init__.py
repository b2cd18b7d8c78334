"""synclearn.memory: the interaction log and replay.

* ``InteractionLog``: every interaction in one SQLite file (WAL, one writer,
  deletes that really delete). See ``synclearn.memory.log``.
* Replay policies with one signature ``policy(candidates, k, rng, now) -> ids`` and
  ``ReplayBatchBuilder``, which feeds ``Learner.step``. See ``synclearn.memory.replay``.
* ``StepJournal``: undo records of every learning step, for exact forgetting.
* ``MemoryManager``: the one object the learner, the chat front end and the server talk to
  about what is remembered (background statistics, protection, rehearsal, fading, forgetting).
* ``BackgroundStats``: how often and how strongly each neuron fires on ordinary input.
* ``NeuronProtection``: per-item, budgeted protection that fades unless rehearsed.
* ``Consolidation``: per-neuron importance and the lock / damp / EWC policies.
* ``Fading``: memories below a retention threshold leave replay (and, by policy, the log).
"""

from synclearn.memory.background import BackgroundStats, background_for, compute_background
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
    "MemoryManager",
    "BackgroundStats",
    "background_for",
    "compute_background",
    "NeuronProtection",
]

from synclearn.memory.manager import MemoryManager  # noqa: E402  (after the log and replay it builds on)
from synclearn.memory.protection import NeuronProtection  # noqa: E402
