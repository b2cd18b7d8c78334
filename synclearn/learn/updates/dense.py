"""Dense updates: every trainable tensor moves, with ``torch.optim.AdamW`` (or ``SGD``).

* ``"full"`` (:class:`FullUpdate`): every weight of the model except the low-rank neuron
  predictor (the baseline the sparse family is measured against);
* ``"lora"`` (:class:`LoRAUpdate`): peft LoRA adapters injected on the model's projections
  (``model.lora_targets``); only the adapters train, the base weights stay as they are.

A dense step's undo record is the trainable tensors and the optimizer state before the step.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from synclearn.learn.updates.base import Forward, NeuronControls, Plan, UpdateConfig, UpdateRule


class DenseUpdate(UpdateRule):
    """Dense AdamW/SGD over ``self.params`` (chosen by the subclass's :meth:`trainable`)."""

    name = "dense"

    def __init__(self, model: nn.Module, config: UpdateConfig, controls: NeuronControls) -> None:
        super().__init__(model, config, controls)
        self.budget = {}
        self.names = self.trainable(model)
        named = dict(model.named_parameters())
        self.params = [named[n] for n in self.names]
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = self._make_optimizer(self.params)

    def trainable(self, model: nn.Module) -> list[str]:
        """Names of the parameters this rule trains."""
        raise NotImplementedError

    def _make_optimizer(self, params: list[Tensor]) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.AdamW(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = value

    # -- the step ----------------------------------------------------------------------------------
    def forward(self, batch: Any, step_index: int) -> Forward | str:
        logits = self.model(batch.inputs)
        loss, per_example = batch.loss(logits)
        return Forward(loss, per_example, list(self.params), reproduced=batch.reproduced(logits))

    def plan(self, forward: Forward, grads: list[Tensor]) -> Plan | str:
        return Plan({}, {}, {}, sum(g.nbytes for g in grads), grads)

    def snapshot(self, plan: Plan) -> dict:
        return {"kind": "dense", "params": [p.detach().cpu().clone() for p in self.params],
                "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def commit(self, plan: Plan) -> None:
        for p, g in zip(self.params, plan.context):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def undo(self, record: dict) -> None:
        with torch.no_grad():
            for p, old in zip(self.params, record["params"]):
                p.copy_(old.to(p.device))
        self.optimizer.load_state_dict(record["optimizer"])

    # -- state and forks ---------------------------------------------------------------------------
    def mutable_tensors(self) -> list[Tensor]:
        return list(self.params)

    def fork(self, model: nn.Module) -> "DenseUpdate":
        other = copy.copy(self)
        other.model = model
        named = dict(model.named_parameters())
        other.params = [named[n] for n in self.names]
        other.optimizer = self._make_optimizer(other.params)
        other.optimizer.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))
        return other

    def adopt(self, other: UpdateRule) -> None:
        self.optimizer.load_state_dict(other.optimizer.state_dict())

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    def training_state_bytes(self) -> int:
        return sum(t.nbytes for s in self.optimizer.state.values() for t in s.values() if isinstance(t, Tensor))


class FullUpdate(DenseUpdate):
    """Every weight except the neuron predictor."""

    name = "full"

    def trainable(self, model: nn.Module) -> list[str]:
        return [n for n, _ in model.named_parameters() if ".predictor." not in n]


class LoRAUpdate(DenseUpdate):
    """peft LoRA adapters on ``config.lora_targets`` (default: the model's ``lora_targets``)."""

    name = "lora"

    @classmethod
    def default_lr(cls, model: nn.Module, plastic_layers: Any) -> float:
        return 3e-3

    def trainable(self, model: nn.Module) -> list[str]:
        from peft import LoraConfig, inject_adapter_in_model

        c = self.config
        targets = list(c.lora_targets or model.lora_targets)
        lora = LoraConfig(r=c.lora_rank, lora_alpha=c.lora_alpha, target_modules=targets, lora_dropout=0.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)  # LoRA A init is random: seed it for bitwise repeats
            inject_adapter_in_model(lora, getattr(model, "hf", model))
        for p in model.parameters():
            p.requires_grad_(False)  # the new adapters start trainable; only the chosen ones stay so
        return [n for n, _ in model.named_parameters() if "lora_" in n]

    def training_state_bytes(self) -> int:
        return super().training_state_bytes() + sum(p.nbytes for p in self.params)  # adapters exist to learn
