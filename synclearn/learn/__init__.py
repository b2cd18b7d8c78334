"""How weights change: neuron selection, sparse updates, the row-sparse optimizer, the Learner."""

from synclearn.learn.batch import LearnerInputError
from synclearn.learn.forget import ForgetError, ForgetReport
from synclearn.learn.guard import GuardTimeout, WeightGuard, guard_for
from synclearn.learn.learner import Learner, StepResult
from synclearn.learn.optim import RowSparseAdamW
from synclearn.learn.select import SELECTORS, select_random, select_topk

__all__ = [
    "ForgetError",
    "ForgetReport",
    "GuardTimeout",
    "Learner",
    "LearnerInputError",
    "RowSparseAdamW",
    "SELECTORS",
    "StepResult",
    "WeightGuard",
    "guard_for",
    "select_random",
    "select_topk",
]
