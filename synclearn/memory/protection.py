"""Protection that does not freeze learning: each learned item guards the neurons its own steps
changed, within a bounded budget per layer, and that guard fades unless the item is rehearsed.

What is tracked (for every plastic layer, from the learner's step observer):

* a row's *lesson*: the steps that trained it while it was new. A row is new from the first
  step whose batch holds it until the first step whose batch does not (a new turn is in every
  batch until it is learned, :class:`~synclearn.memory.ReplayBatchBuilder`); replayed rows
  come back only now and then, so they never extend a lesson. When a lesson ends, the row's
  neurons are the ``per_item`` neurons its lesson's steps changed most often (ties: lower id);
* a protection level per neuron in [0, 1]: set to 1 when a lesson ending or a replay of the
  row names the neuron, multiplied by ``0.5 ** (1 / half_life_steps)`` at every committed step.

The protected set of a layer is the neurons whose level is at least ``floor``, at most
``budget`` of the layer (the highest levels; ties: the lower id): so at least ``1 - budget``
of every layer stays free to learn, however long the learner runs, and what is not rehearsed
for a few half-lives stops being protected.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Iterable

import torch
from torch import Tensor


class NeuronProtection:
    """Per-item, budgeted, decaying protection of neurons.

    Args:
        d_ff: plastic layer -> number of neurons.
        budget: largest share of a layer's neurons protected at once (0 <= budget < 1).
        half_life_steps: committed steps after which an unrehearsed level has halved.
        floor: a neuron is protected while its level is at least this (0 < floor <= 1).
        per_item: neurons per layer a learned item keeps (None: as many as one step changed).
        max_items: items whose neurons are remembered (oldest dropped first).
    """

    def __init__(self, d_ff: dict[int, int], *, budget: float = 0.4, half_life_steps: float = 1000.0,
                 floor: float = 0.25, per_item: int | None = None, max_items: int = 100_000) -> None:
        bad = []
        if not 0 <= budget < 1:
            bad.append(f"budget={budget!r} (expected 0 <= budget < 1)")
        if not half_life_steps > 0:
            bad.append(f"half_life_steps={half_life_steps!r} (expected > 0)")
        if not 0 < floor <= 1:
            bad.append(f"floor={floor!r} (expected 0 < floor <= 1)")
        if per_item is not None and per_item < 1:
            bad.append(f"per_item={per_item!r} (expected >= 1 or None)")
        if max_items < 1:
            bad.append(f"max_items={max_items!r} (expected >= 1)")
        if bad:
            raise ValueError("invalid NeuronProtection settings: " + "; ".join(bad))
        self.budget, self.half_life_steps, self.floor = float(budget), float(half_life_steps), float(floor)
        self.per_item, self.max_items = per_item, int(max_items)
        self.d_ff = {int(k): int(v) for k, v in d_ff.items()}
        self.level = {layer: torch.zeros(n, dtype=torch.float64) for layer, n in self.d_ff.items()}
        self.items: OrderedDict[int, dict[int, Tensor]] = OrderedDict()  # row id -> layer -> neuron ids
        self.lessons: dict[int, dict[int, Tensor]] = {}  # row id -> layer -> use counts [d_ff] (while new)
        self.step_size: dict[int, int] = {}  # layer -> most neurons one step changed
        self.steps = 0

    @property
    def decay(self) -> float:
        """The factor every level is multiplied by per committed step."""
        return 0.5 ** (1.0 / self.half_life_steps)

    def observe(self, ids: Iterable[int | None], neurons: dict[int, Iterable[int]]) -> None:
        """One committed step: its batch's row ids and the neurons it changed per layer."""
        self.steps += 1
        for level in self.level.values():
            level.mul_(self.decay)
        now = {int(i) for i in ids if i is not None}
        for rid in [r for r in self.lessons if r not in now]:  # lessons that ended before this step
            self._learned(rid, self.lessons.pop(rid))
        used = {layer: torch.as_tensor(list(idx), dtype=torch.long) for layer, idx in neurons.items()
                if layer in self.level}
        for layer, idx in used.items():
            self.step_size[layer] = max(self.step_size.get(layer, 0), len(idx))
        for rid in now:
            if rid in self.lessons:
                self._count(self.lessons[rid], used)
            elif rid in self.items:  # replayed: its lesson's neurons are refreshed
                self.items.move_to_end(rid)
                self._refresh(self.items[rid])
            else:  # first seen: a lesson starts
                self.lessons[rid] = self._count({}, used)

    def _count(self, counts: dict[int, Tensor], used: dict[int, Tensor]) -> dict[int, Tensor]:
        for layer, idx in used.items():
            c = counts.setdefault(layer, torch.zeros(self.d_ff[layer], dtype=torch.float64))
            c.index_add_(0, idx, torch.ones(len(idx), dtype=torch.float64))
        return counts

    def _learned(self, rid: int, counts: dict[int, Tensor]) -> None:
        kept = {}
        for layer, c in counts.items():
            n = int((c > 0).sum())
            k = min(n, self.per_item or self.step_size.get(layer, n))
            order = torch.argsort(c, descending=True, stable=True)[:k]
            kept[layer] = order.sort().values
        self.items[rid] = kept
        self.items.move_to_end(rid)
        while len(self.items) > self.max_items:
            self.items.popitem(last=False)
        self._refresh(kept)

    def _refresh(self, neurons: dict[int, Tensor]) -> None:
        for layer, idx in neurons.items():
            self.level[layer][idx] = 1.0

    def settle(self) -> None:
        """End every open lesson now (e.g. before reading the protected set between streams)."""
        for rid in list(self.lessons):
            self._learned(rid, self.lessons.pop(rid))

    def forget(self, ids: Iterable[int]) -> None:
        """Drop what is remembered of these rows (their neurons' levels fade as usual)."""
        for rid in ids:
            self.items.pop(int(rid), None)
            self.lessons.pop(int(rid), None)

    def protected(self, layer: int) -> Tensor:
        """BoolTensor [d_ff]: the neurons of ``layer`` protected now."""
        level = self.level[layer]
        cap = int(math.floor(self.budget * len(level)))
        mask = torch.zeros(len(level), dtype=torch.bool)
        eligible = level >= self.floor
        if cap == 0 or not eligible.any():
            return mask
        ranking = torch.where(eligible, level, torch.full_like(level, -1.0))
        top = torch.argsort(ranking, descending=True, stable=True)[: min(cap, int(eligible.sum()))]
        mask[top] = True
        return mask

    def state_dict(self) -> dict[str, Any]:
        return {"level": {k: v.clone() for k, v in self.level.items()}, "steps": self.steps,
                "step_size": dict(self.step_size),
                "items": {rid: {k: v.clone() for k, v in n.items()} for rid, n in self.items.items()},
                "lessons": {rid: {k: v.clone() for k, v in c.items()} for rid, c in self.lessons.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.level = {int(k): v.double().clone() for k, v in state["level"].items()}
        self.steps = int(state["steps"])
        self.step_size = {int(k): int(v) for k, v in state.get("step_size", {}).items()}
        self.items = OrderedDict((int(r), {int(k): v.clone() for k, v in n.items()}) for r, n in state["items"].items())
        self.lessons = {int(r): {int(k): v.clone() for k, v in c.items()} for r, c in state["lessons"].items()}
