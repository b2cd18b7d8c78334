"""The update-rule protocol: what a family of learning updates must provide to the Learner.

    rule = UPDATE_RULES["sparse"](model, config, controls)
    forward = rule.forward(batch, step_index)          # loss with grad, or a reason to skip
    plan = rule.plan(forward, clipped_grads)           # the new values, nothing changed yet
    undo = rule.snapshot(plan)                         # what commit will overwrite (journal)
    with guard.write(): rule.commit(plan)              # the only place weights change
    with guard.write(): rule.undo(undo)                # put a journaled step back

The :class:`~synclearn.learn.learner.Learner` orchestrates: it builds the batch, adds the
regularizers, differentiates, clips, refuses non-finite losses, gradients and updates, takes
the write lock, journals and calls the observers; it never asks which family it runs. A rule
owns its trainable state (optimizer moments, adapters) and reports it through
``state_dict``/``load_state_dict`` and ``training_state_bytes``.

Families (each its own module, registered in :data:`UPDATE_RULES` by
:mod:`synclearn.learn.updates`):

* ``"sparse"`` (:mod:`.sparse`): the neurons the batch activated most, row-sparse AdamW/SGD;
* ``"full"`` and ``"lora"`` (:mod:`.dense`): dense AdamW/SGD on every weight, or on peft LoRA
  adapters.

For exact forgetting a rule can be *forked* onto a copy of the model (:meth:`fork`): the
copy shares every tensor the rule never writes (:meth:`mutable_tensors` says which it does),
so only the changing weights are duplicated; the fork's results are bitwise those the rule
would have computed in place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn


@dataclass
class UpdateConfig:
    """Every setting an update rule may use (each rule reads the ones it needs).

    Attributes:
        lr, betas, eps, weight_decay: optimizer settings. optimizer: "adamw" or "sgd".
        plastic_layers: layer indices a sparse step may change. neuron_fraction: sparse budget.
        selector: a selector name or callable (:mod:`synclearn.learn.select`). exploration: its share.
        optimizer_capacity: neurons with moments per layer (sparse AdamW; None: 2x the budget).
        lora_rank, lora_alpha, lora_targets: LoRA settings. seed: seeds selection and LoRA init.
    """

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    plastic_layers: Sequence[int] = ()
    neuron_fraction: float = 0.05
    selector: Any = "topk"
    exploration: float = 0.1
    optimizer_capacity: int | None = None
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: Sequence[str] | None = None
    seed: int = 0


@dataclass
class NeuronControls:
    """What the memory manager sets per plastic layer (layer -> tensor [d_ff], on CPU):
    neurons never selected, per-neuron learning-rate factors, background statistics."""

    protected: dict[int, Tensor] = field(default_factory=dict)
    lr_scale: dict[int, Tensor] = field(default_factory=dict)
    background: dict[int, Tensor] = field(default_factory=dict)

    def copy(self) -> "NeuronControls":
        return NeuronControls({k: v.clone() for k, v in self.protected.items()},
                              {k: v.clone() for k, v in self.lr_scale.items()},
                              {k: v.clone() for k, v in self.background.items()})

    @staticmethod
    def mask(layer: int, d_ff: int, neurons: Tensor | Sequence[int]) -> Tensor:
        """BoolTensor [d_ff] with ``neurons`` set; a clear error for ids out of range."""
        idx = torch.as_tensor(neurons, dtype=torch.long).flatten().cpu()
        if len(idx) and (idx.min() < 0 or idx.max() >= d_ff):
            raise ValueError(f"neuron ids of layer {layer} must be in [0, {d_ff}); got {int(idx.min())}..{int(idx.max())}")
        mask = torch.zeros(d_ff, dtype=torch.bool)
        mask[idx] = True
        return mask

    def set(self, kind: str, layer: int, d_ff: int, values: Tensor | None) -> None:
        """Set (a copy of) ``values`` [d_ff] as ``kind`` ("protected", "lr_scale" or
        "background") of ``layer``; None removes it."""
        table = getattr(self, kind)
        if values is None:
            table.pop(layer, None)
            return
        values = torch.as_tensor(values).detach().cpu()
        if values.shape != (d_ff,):
            raise ValueError(f"{kind} of layer {layer} has shape {tuple(values.shape)}; expected ({d_ff},)")
        dtype = {"protected": torch.bool, "lr_scale": torch.float32}.get(kind, values.dtype)
        table[layer] = values.to(dtype).clone()

    def get(self, kind: str, layer: int) -> Tensor | None:
        """A copy of ``kind`` of ``layer``, or None."""
        value = getattr(self, kind).get(layer)
        return None if value is None else value.clone()


@dataclass
class Forward:
    """One step's forward pass: ``loss`` (scalar, with grad), ``per_example`` [B] (detached),
    ``leaves``: what to differentiate, ``context``: rule-specific (e.g. the gathered slices),
    ``reproduced`` [B] bool (``Batch.reproduced``: the model already gives the example's target)."""

    loss: Tensor
    per_example: Tensor
    leaves: list[Tensor]
    context: Any = None
    reproduced: Tensor | None = None


@dataclass
class Plan:
    """What a commit will change (nothing is changed until ``commit``).

    Attributes:
        touched: layer -> number of neurons changed ({} for dense rules).
        neurons: layer -> the changed neuron ids ({} for dense rules).
        grads: layer -> flat gradient rows [k, row_len] of the changed neurons (observers).
        scratch_bytes: memory the step allocated for learning and frees after it.
        context: rule-specific.
    """

    touched: dict[int, int]
    neurons: dict[int, list[int]]
    grads: dict[int, Tensor]
    scratch_bytes: int
    context: Any = None


class UpdateRule(ABC):
    """One family of updates on one model. ``params`` are the dense trainable tensors ([] for
    sparse), ``budget`` the per-layer neuron budget ({} for dense), ``optimizer`` the optimizer."""

    name = "base"
    params: list[Tensor]
    budget: dict[int, int]
    optimizer: Any

    def __init__(self, model: nn.Module, config: UpdateConfig, controls: NeuronControls) -> None:
        self.model, self.config, self.controls = model, config, controls

    @classmethod
    def default_lr(cls, model: nn.Module, plastic_layers: Sequence[int]) -> float:
        """The learning rate when the user gives none."""
        return 1e-3

    @abstractmethod
    def forward(self, batch: Any, step_index: int) -> Forward | str:
        """The loss of ``batch`` as this rule will learn it, or why it cannot be learned."""

    @abstractmethod
    def plan(self, forward: Forward, grads: list[Tensor]) -> Plan | str:
        """The update from the (clipped) ``grads`` of ``forward.leaves``, or why it is refused
        (e.g. "non-finite update"). Changes nothing."""

    @abstractmethod
    def snapshot(self, plan: Plan) -> dict:
        """What :meth:`commit` will overwrite (tensors, numbers, lists, dicts; journal-able)."""

    @abstractmethod
    def commit(self, plan: Plan) -> None:
        """Write the plan into the weights and the optimizer. The caller holds the write lock."""

    @abstractmethod
    def undo(self, record: dict) -> None:
        """Put back what a :meth:`snapshot` saw. The caller holds the write lock."""

    @abstractmethod
    def mutable_tensors(self) -> list[Tensor]:
        """Every tensor of the model a commit or undo may write."""

    @abstractmethod
    def fork(self, model: nn.Module) -> "UpdateRule":
        """This rule with a copy of its state, on ``model`` (a copy of this rule's model)."""

    @abstractmethod
    def adopt(self, other: "UpdateRule") -> None:
        """Take ``other``'s optimizer state (a fork of this rule); weights are copied by the caller."""

    @abstractmethod
    def state_dict(self) -> dict:
        """The optimizer state (what a checkpoint keeps besides the weights)."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        ...

    @abstractmethod
    def training_state_bytes(self) -> int:
        """Bytes held between steps only for learning."""

    @property
    @abstractmethod
    def lr(self) -> float:
        ...

    @lr.setter
    @abstractmethod
    def lr(self, value: float) -> None:
        ...
