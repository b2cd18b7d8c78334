"""RowSparseAdamW: AdamW whose moments exist only for the neurons that were touched.

A neuron's parameters are one flat row (its input rows and output column, concatenated:
``width`` numbers). Each plastic layer has a bounded table of ``capacity`` rows holding the
first and second moments (fp32; fp64 for fp64 models) and a per-row step count (bias correction is per neuron,
since neurons are touched at different times). When the table is full, the least recently
touched neurons not in the current step are evicted (LRU); a neuron touched again later
starts from fresh moments.

Updates are two-phase so that nothing is half-applied: :meth:`plan` computes the new
parameter rows and the new table rows without changing anything, and :meth:`commit`
installs the table rows (the learner writes the weights in the same critical section).
Training state is therefore at most ``capacity * width * 8`` bytes per layer, plus a
per-row int64 step count.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RowPlan:
    """What one layer's update will change (nothing is changed until ``commit``)."""

    layer: int
    neurons: list[int]
    new_params: Tensor  # [k, width] in float32
    m: Tensor  # [k, width]
    v: Tensor  # [k, width]
    t: Tensor  # [k] int64
    evict: list[int]  # neurons whose rows leave the table


class _Table:
    def __init__(self, capacity: int, width: int, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        self.slots: OrderedDict[int, int] = OrderedDict()  # neuron -> slot, least recent first
        self.free = list(range(capacity - 1, -1, -1))
        self.m = torch.zeros(capacity, width, device=device, dtype=dtype)
        self.v = torch.zeros(capacity, width, device=device, dtype=dtype)
        self.t = torch.zeros(capacity, dtype=torch.long, device=device)


class RowSparseAdamW:
    """AdamW over neuron rows with a bounded LRU table of moments per layer.

    Args:
        lr: learning rate. betas, eps, weight_decay: as in ``torch.optim.AdamW``.
        capacity: most neurons with moments per layer.
    """

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, capacity: int = 1024) -> None:
        bad = []
        if not lr > 0:
            bad.append(f"lr={lr!r} (expected > 0)")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            bad.append(f"betas={betas!r} (expected each in [0, 1))")
        if not eps > 0:
            bad.append(f"eps={eps!r} (expected > 0)")
        if weight_decay < 0:
            bad.append(f"weight_decay={weight_decay!r} (expected >= 0)")
        if not isinstance(capacity, int) or capacity < 1:
            bad.append(f"capacity={capacity!r} (expected a positive integer)")
        if bad:
            raise ValueError("invalid RowSparseAdamW settings: " + "; ".join(bad))
        self.lr, self.betas, self.eps, self.weight_decay, self.capacity = lr, betas, eps, weight_decay, capacity
        self.tables: dict[int, _Table] = {}

    def plan(self, layer: int, neurons: Tensor, params: Tensor, grads: Tensor, lr_scale: Tensor | None = None) -> RowPlan:
        """The AdamW step for ``neurons`` [k] with rows ``params``/``grads`` [k, width];
        ``lr_scale`` [k] optionally scales each row's learning rate (consolidation damping)."""
        ids = [int(i) for i in neurons]
        if len(ids) > self.capacity:
            raise ValueError(f"{len(ids)} neurons in one step exceed the optimizer capacity {self.capacity}")
        table = self.tables.get(layer)
        width = params.shape[1]
        m = torch.zeros(len(ids), width, device=params.device, dtype=params.dtype)
        v = torch.zeros_like(m)
        t = torch.zeros(len(ids), dtype=torch.long, device=params.device)
        if table is not None:
            slots = torch.tensor([table.slots.get(n, -1) for n in ids], dtype=torch.long, device=params.device)
            have = slots >= 0
            m[have], v[have], t[have] = table.m[slots[have]], table.v[slots[have]], table.t[slots[have]]
        b1, b2 = self.betas
        g, p = grads.to(params.dtype), params
        t = t + 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t.double()).to(m.dtype)[:, None]
        v_hat = v / (1 - b2 ** t.double()).to(m.dtype)[:, None]
        lr = self.lr if lr_scale is None else self.lr * lr_scale.to(p.dtype)[:, None]
        new = p * (1 - lr * self.weight_decay) - lr * m_hat / (v_hat.sqrt() + self.eps)
        evict: list[int] = []
        if table is not None:
            new_ids = [n for n in ids if n not in table.slots]
            overflow = len(new_ids) - len(table.free)
            current = set(ids)
            for n in table.slots:  # least recently used first
                if overflow <= 0:
                    break
                if n not in current:
                    evict.append(n)
                    overflow -= 1
        return RowPlan(layer, ids, new, m, v, t, evict)

    def commit(self, plan: RowPlan) -> None:
        """Install a plan's moments (and its evictions) in the layer's table."""
        table = self.tables.get(plan.layer)
        if table is None:
            table = self.tables[plan.layer] = _Table(self.capacity, plan.m.shape[1], plan.m.device, plan.m.dtype)
        for n in plan.evict:
            slot = table.slots.pop(n)
            table.m[slot].zero_()
            table.v[slot].zero_()
            table.t[slot] = 0
            table.free.append(slot)
        slots = []
        for n in plan.neurons:
            slot = table.slots.pop(n, None)
            table.slots[n] = slot = table.free.pop() if slot is None else slot  # now most recently used
            slots.append(slot)
        index = torch.tensor(slots, dtype=torch.long, device=table.m.device)
        table.m[index], table.v[index], table.t[index] = plan.m, plan.v, plan.t

    # -- undo (the step journal) ---------------------------------------------------------------
    def snapshot(self, plan: RowPlan) -> dict:
        """What ``commit(plan)`` will overwrite: the table's LRU order and the moments of the
        touched and evicted neurons that have them. Take it before the commit."""
        table = self.tables.get(plan.layer)
        if table is None:
            return {"order": [], "neurons": [], "m": None, "v": None, "t": None}
        have = [n for n in dict.fromkeys([*plan.neurons, *plan.evict]) if n in table.slots]
        slots = torch.tensor([table.slots[n] for n in have], dtype=torch.long)
        return {"order": list(table.slots), "neurons": have, "m": table.m[slots].clone(),
                "v": table.v[slots].clone(), "t": table.t[slots].clone()}

    def restore(self, layer: int, snap: dict) -> None:
        """Put a layer's table back to what :meth:`snapshot` saw."""
        table = self.tables.get(layer)
        if table is None:
            return
        keep = set(snap["order"])
        for n in [n for n in table.slots if n not in keep]:  # added by the undone step
            slot = table.slots.pop(n)
            table.m[slot].zero_()
            table.v[slot].zero_()
            table.t[slot] = 0
            table.free.append(slot)
        slots = OrderedDict()
        for n in snap["order"]:
            slots[n] = table.slots[n] if n in table.slots else table.free.pop()  # evicted ones come back
        table.slots = slots
        if snap["neurons"]:
            index = torch.tensor([slots[n] for n in snap["neurons"]], dtype=torch.long, device=table.m.device)
            table.m[index], table.v[index], table.t[index] = snap["m"], snap["v"], snap["t"]
        if not table.slots:
            del self.tables[layer]

    # -- inspection and persistence ------------------------------------------------------------
    def tracked(self, layer: int) -> list[int]:
        """Neurons of ``layer`` that currently have moments, least recently used first."""
        table = self.tables.get(layer)
        return list(table.slots) if table else []

    def state_bytes(self) -> int:
        """Bytes held by all tables (allocated capacity)."""
        return sum(t.m.nbytes + t.v.nbytes + t.t.nbytes for t in self.tables.values())

    def state_dict(self) -> dict:
        layers = {}
        for layer, table in self.tables.items():
            neurons = list(table.slots)
            slots = torch.tensor([table.slots[n] for n in neurons], dtype=torch.long)
            layers[layer] = {"neurons": torch.tensor(neurons, dtype=torch.long), "m": table.m[slots].clone(),
                             "v": table.v[slots].clone(), "t": table.t[slots].clone()}
        return {"hyper": {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay,
                          "capacity": self.capacity}, "layers": layers}

    def load_state_dict(self, state: dict) -> None:
        hyper = state["hyper"]
        self.__init__(**{**hyper, "betas": tuple(hyper["betas"])})
        for layer, rows in state["layers"].items():
            n = len(rows["neurons"])
            if n > self.capacity:
                raise ValueError(f"layer {layer}: {n} rows exceed capacity {self.capacity}")
            table = self.tables[int(layer)] = _Table(self.capacity, rows["m"].shape[1], rows["m"].device, rows["m"].dtype)
            for j, neuron in enumerate(rows["neurons"].tolist()):
                slot = table.free.pop()
                table.slots[neuron] = slot
                table.m[slot], table.v[slot], table.t[slot] = rows["m"][j], rows["v"][j], rows["t"][j]


class RowSparseSGD:
    """Plain SGD over neuron rows: no moments, so no training state at all.

    Same two-phase interface as :class:`RowSparseAdamW` (``plan`` computes, ``commit`` installs,
    ``snapshot``/``restore`` for the journal); the row update is exactly
    ``torch.optim.SGD``'s: ``p - lr * (g + weight_decay * p)``.

    Args:
        lr: learning rate. weight_decay: L2 penalty (added to the gradient, as torch does).
    """

    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        bad = []
        if not lr > 0:
            bad.append(f"lr={lr!r} (expected > 0)")
        if weight_decay < 0:
            bad.append(f"weight_decay={weight_decay!r} (expected >= 0)")
        if bad:
            raise ValueError("invalid RowSparseSGD settings: " + "; ".join(bad))
        self.lr, self.weight_decay = lr, weight_decay

    def plan(self, layer: int, neurons: Tensor, params: Tensor, grads: Tensor, lr_scale: Tensor | None = None) -> RowPlan:
        """The SGD step for ``neurons`` [k] with rows ``params``/``grads`` [k, width]."""
        g, p = grads.to(params.dtype), params
        if self.weight_decay:
            g = g.add(p, alpha=self.weight_decay)
        if lr_scale is None:
            new = p.add(g, alpha=-self.lr)
        else:
            new = p - (self.lr * lr_scale.to(p.dtype))[:, None] * g
        empty = torch.zeros(0, device=p.device, dtype=p.dtype)
        return RowPlan(layer, [int(i) for i in neurons], new, empty, empty, torch.zeros(0, dtype=torch.long), [])

    def commit(self, plan: RowPlan) -> None:
        """Nothing to install: SGD keeps no state."""

    def snapshot(self, plan: RowPlan) -> dict:
        return {}

    def restore(self, layer: int, snap: dict) -> None:
        """Nothing to restore."""

    def tracked(self, layer: int) -> list[int]:
        return []

    def state_bytes(self) -> int:
        return 0

    def state_dict(self) -> dict:
        return {"hyper": {"lr": self.lr, "weight_decay": self.weight_decay}, "layers": {}}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(**state["hyper"])
