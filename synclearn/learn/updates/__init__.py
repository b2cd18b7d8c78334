"""Update rules as plug-ins: one protocol (:mod:`.base`), one module per family.

``UPDATE_RULES`` maps the ``Learner(update=...)`` names to their rule classes; a new family
is a new :class:`~synclearn.learn.updates.base.UpdateRule` subclass registered here.
"""

from synclearn.learn.updates.base import Forward, NeuronControls, Plan, UpdateConfig, UpdateRule
from synclearn.learn.updates.dense import DenseUpdate, FullUpdate, LoRAUpdate
from synclearn.learn.updates.sparse import SparseRowUpdate

UPDATE_RULES: dict[str, type[UpdateRule]] = {"sparse": SparseRowUpdate, "lora": LoRAUpdate, "full": FullUpdate}

__all__ = ["UPDATE_RULES", "DenseUpdate", "Forward", "FullUpdate", "LoRAUpdate", "NeuronControls", "Plan",
           "SparseRowUpdate", "UpdateConfig", "UpdateRule"]
