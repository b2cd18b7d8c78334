"""Sparse row updates: only the neurons a batch activated most change.

Per plastic layer, a selector (:mod:`synclearn.learn.select`) picks up to ``budget`` neurons
from the batch's activations (never a protected one); their weights are gathered into small
leaves (:mod:`synclearn.learn.sparse`), the loss is computed through them, and
:class:`~synclearn.learn.optim.RowSparseAdamW` (or :class:`~synclearn.learn.optim.RowSparseSGD`)
plans the new rows, which the commit writes back with ``index_copy_``. Every other element
of every weight stays bitwise unchanged.

A step's selection is seeded by ``(seed, step index)``, so a re-run of the same step on the
same weights selects the same neurons.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from synclearn.learn.optim import RowSparseAdamW, RowSparseSGD
from synclearn.learn.select import SELECTORS
from synclearn.learn.sparse import step_forward, write_back
from synclearn.learn.updates.base import Forward, NeuronControls, Plan, UpdateConfig, UpdateRule
from synclearn.model.neurons import NeuronTrace


class _Refused(Exception):
    """A batch the step cannot learn from; the message says why."""


class SparseRowUpdate(UpdateRule):
    """Row-sparse updates of the selected neurons of the plastic layers (see module docstring)."""

    name = "sparse"

    def __init__(self, model: nn.Module, config: UpdateConfig, controls: NeuronControls) -> None:
        super().__init__(model, config, controls)
        layouts = model.neuron_layouts()
        self.params = []
        self.budget = {i: max(1, round(config.neuron_fraction * layouts[i].d_ff)) for i in config.plastic_layers}
        capacity = config.optimizer_capacity or 2 * max(self.budget.values())
        if capacity < max(self.budget.values()):
            raise ValueError(f"optimizer_capacity={capacity} is below the per-layer neuron budget "
                             f"{max(self.budget.values())}; it must hold at least one step's neurons")
        if config.optimizer == "sgd":
            self.optimizer: Any = RowSparseSGD(config.lr, config.weight_decay)
        else:
            self.optimizer = RowSparseAdamW(config.lr, config.betas, config.eps, config.weight_decay, capacity)

    @classmethod
    def default_lr(cls, model: nn.Module, plastic_layers: Any) -> float:
        """1e-3 x 512 / width: an Adam step moves every coordinate of a selected neuron by ~lr,
        so its effect on the neuron's pre-activation grows with the width D."""
        return 1e-3 * 512 / model.neuron_layouts()[plastic_layers[0]].in_weights[0].shape[1]

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.optimizer.lr = value

    # -- the step ----------------------------------------------------------------------------------
    def _chooser(self, trace: NeuronTrace, source: str, step_index: int):
        """choose(layer) -> the neurons to update, from ``trace``; raises :class:`_Refused`."""
        selector = self.config.selector
        fn = selector if callable(selector) else SELECTORS[selector][0]
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step_index)

        def choose(layer: int) -> Tensor:
            scores = getattr(trace, source).get(layer)
            if scores is None:
                raise RuntimeError(f"layer {layer} recorded no {source}; selector {selector!r} needs it")
            if not torch.isfinite(scores).all():
                raise _Refused(f"non-finite activations in layer {layer}")
            return fn(scores, self.budget[layer], locked=self.controls.protected.get(layer),
                      exploration=self.config.exploration, generator=gen,
                      background=self.controls.background.get(layer))
        return choose

    def one_pass(self, source: str) -> bool:
        """Whether the step selects inside its own forward (:func:`selecting_forward`): not for a
        selector that reads the predictor's scores, nor for experts of a mixture."""
        return source != "predicted_mass" and "expert" not in getattr(self.model, "neuron_families", ())

    def forward(self, batch: Any, step_index: int) -> Forward | str:
        selector = self.config.selector
        source = "mass" if callable(selector) else SELECTORS[selector][1]
        trace = NeuronTrace(mask=batch.mask, predicted=source == "predicted_mass")
        choose = self._chooser(trace, source, step_index)
        form = "one_pass" if self.one_pass(source) else "two_pass"
        try:
            logits, slices = step_forward(self.model, batch.inputs, trace, list(self.config.plastic_layers), choose, form)
        except _Refused as refused:
            return str(refused)
        if not slices:
            return "no neuron of a plastic layer fired for this batch"
        loss, per_example = batch.loss(logits)
        leaves = [leaf for sl in slices.values() for leaf in sl.leaves]
        return Forward(loss, per_example, leaves, slices, reproduced=batch.reproduced(logits))

    def plan(self, forward: Forward, grads: list[Tensor]) -> Plan | str:
        slices = forward.context
        plans, flat_grads, start = [], {}, 0
        for layer, sl in slices.items():
            n = len(sl.leaves)
            flat_grads[layer] = sl.flat_grads(grads[start : start + n])
            start += n
            scale = self.controls.lr_scale.get(layer)
            scale = scale[sl.idx.cpu()].to(sl.idx.device) if scale is not None else None
            plans.append(self.optimizer.plan(layer, sl.idx, sl.flat(), flat_grads[layer], lr_scale=scale))
        if not all(torch.isfinite(p.new_params).all() for p in plans):
            return "non-finite update"
        scratch = sum(2 * sl.nbytes() for sl in slices.values())  # leaves + their gradients
        return Plan({layer: len(sl.idx) for layer, sl in slices.items()},
                    {layer: sl.idx.tolist() for layer, sl in slices.items()}, flat_grads, scratch, (slices, plans))

    def snapshot(self, plan: Plan) -> dict:
        slices, plans = plan.context
        return {"kind": "sparse", "layers": {
            p.layer: {"idx": slices[p.layer].idx.cpu(), "rows": slices[p.layer].flat().cpu(),
                      "optimizer": self.optimizer.snapshot(p)} for p in plans}}

    def commit(self, plan: Plan) -> None:
        slices, plans = plan.context
        layouts = self.model.neuron_layouts()
        for row_plan in plans:
            write_back(layouts[row_plan.layer], slices[row_plan.layer].idx, row_plan.new_params)
            self.optimizer.commit(row_plan)

    def undo(self, record: dict) -> None:
        layouts = self.model.neuron_layouts()
        device = layouts[0].out_weight.device
        for layer, rec in record["layers"].items():
            write_back(layouts[int(layer)], rec["idx"], rec["rows"].to(device))
            self.optimizer.restore(int(layer), rec["optimizer"])

    # -- state and forks ---------------------------------------------------------------------------
    def mutable_tensors(self) -> list[Tensor]:
        layouts = self.model.neuron_layouts()
        return [t for layer in self.config.plastic_layers
                for t in (*layouts[layer].in_weights, layouts[layer].out_weight)]

    def fork(self, model: nn.Module) -> "SparseRowUpdate":
        other = copy.copy(self)
        other.model = model
        other.optimizer = copy.deepcopy(self.optimizer)
        return other

    def adopt(self, other: UpdateRule) -> None:
        self.optimizer = other.optimizer

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    def training_state_bytes(self) -> int:
        return self.optimizer.state_bytes()
