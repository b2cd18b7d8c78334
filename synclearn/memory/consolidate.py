"""Consolidation: keep what matters by protecting the neurons (or parameters) it lives in.

Per-neuron importance is accumulated online for every plastic layer and decays over time:

* from served traffic, without labels (MAS-style, Aljundi et al. 2018): how much each neuron
  moves the norm of its layer's output, s_i = sum_t |h_ti * (y_t . W_out[:, i])|, where h is
  the neuron's activation and y the MLP output -- the first-order sensitivity of ||y||^2 / 2
  to the neuron. It is computed on logged interactions in the learner's thread, never on the
  serving path;
* from the learning loss (Fisher-style, as in EWC): the squared gradient of each selected
  neuron's slice at every committed sparse step.

Policies (one signature: ``Consolidation(learner, policy=..., ...)``, then ``consolidate()``):

* ``"off"``: importance is still tracked, nothing is protected;
* ``"lock"``: the ``fraction`` most important neurons of each plastic layer are locked; the
  neuron selector never picks them, so they never change. With ``accumulate=True`` every
  ``consolidate()`` adds its top neurons to the earlier locks, so the locked share only grows;
  with ``accumulate=False`` the locks are the current top ``fraction`` of the decayed
  importance: at most ``fraction`` of a layer is locked, and a neuron is released once its
  importance (renewed by replayed steps that use it) falls out of the top;
* ``"damp"``: each neuron's learning rate is divided by 1 + strength * importance / mean;
* ``"ewc"``: for LoRA/full updates, a penalty strength * sum F (theta - theta*)^2 pulls every
  trainable parameter toward its value at the last ``consolidate()``, weighted by the
  running Fisher estimate F (squared gradients, normalized to mean 1); MAS weights are the
  alternative (``importance="mas"``), estimated from the gradient of the output norm.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from synclearn.learn.batch import build_batch, masked_loss
from synclearn.model.neurons import neuron_context

POLICIES = ("off", "lock", "damp", "ewc")


class NeuronImportance:
    """Running per-neuron importance of the plastic layers (float64, on CPU).

    Args:
        d_ff: layer -> number of neurons.
        decay: every observation first multiplies the running importance by this factor.
    """

    def __init__(self, d_ff: dict[int, int], decay: float = 0.99) -> None:
        if not 0 < decay <= 1:
            raise ValueError(f"decay={decay!r} (expected 0 < decay <= 1)")
        self.decay = decay
        self.scores = {layer: torch.zeros(n, dtype=torch.float64) for layer, n in d_ff.items()}

    def add(self, layer: int, neurons: Tensor | None, values: Tensor) -> None:
        """Decay layer ``layer`` and add ``values`` (for ``neurons``, or for all when None)."""
        s = self.scores[layer]
        s.mul_(self.decay)
        if neurons is None:
            s.add_(values.detach().double().cpu())
        else:
            s.index_add_(0, neurons.cpu(), values.detach().double().cpu())

    def top(self, layer: int, fraction: float) -> Tensor:
        """The ``fraction`` most important neurons of ``layer`` (only those with importance > 0)."""
        s = self.scores[layer]
        k = min(int(round(fraction * len(s))), int((s > 0).sum()))
        return s.topk(k).indices.sort().values if k else torch.empty(0, dtype=torch.long)


class Consolidation:
    """Tracks importance for ``learner`` and applies a consolidation policy.

    Args:
        learner: the Learner to protect.
        policy: "off", "lock", "damp" or "ewc".
        fraction: share of each plastic layer's neurons to lock ("lock").
        strength: damping factor ("damp") or penalty weight ("ewc").
        decay: importance decay per observation.
        importance: "fisher" or "mas", the weights of the EWC penalty.
        accumulate: "lock" only: keep every earlier lock (True) or hold at most ``fraction``
            locked, the current top (False); it releases only neurons it locked itself.
    """

    def __init__(self, learner: Any, policy: str = "lock", *, fraction: float = 0.1, strength: float = 1.0,
                 decay: float = 0.99, importance: str = "fisher", accumulate: bool = True) -> None:
        bad = []
        if policy not in POLICIES:
            bad.append(f"policy={policy!r} (expected one of {POLICIES})")
        if not 0 <= fraction < 1:
            bad.append(f"fraction={fraction!r} (expected 0 <= fraction < 1)")
        if strength < 0:
            bad.append(f"strength={strength!r} (expected >= 0)")
        if importance not in ("fisher", "mas"):
            bad.append(f"importance={importance!r} (expected 'fisher' or 'mas')")
        if policy == "ewc" and learner.update == "sparse":
            bad.append("policy='ewc' applies to LoRA/full updates; sparse learners use 'lock' or 'damp'")
        if policy in ("lock", "damp") and learner.update != "sparse":
            bad.append(f"policy={policy!r} protects neurons, which only sparse learners update; use 'ewc'")
        if bad:
            raise ValueError("invalid Consolidation settings: " + "; ".join(bad))
        self.learner, self.policy, self.fraction, self.strength = learner, policy, fraction, strength
        self.importance_kind, self.accumulate = importance, bool(accumulate)
        self.locked: dict[int, Tensor] = {}  # layer -> the neurons this object locked (accumulate=False)
        layouts = learner.model.neuron_layouts()
        self.neurons = NeuronImportance({layer: layouts[layer].d_ff for layer in learner.plastic_layers}, decay)
        self.fisher: dict[int, Tensor] = {}
        self.anchor: list[Tensor] = []
        learner.add_step_observer(self._observe_step)
        if policy == "ewc":
            self.fisher = {i: torch.zeros_like(p) for i, p in enumerate(learner.params)}
            learner.add_regularizer(self.penalty)

    # -- observations -------------------------------------------------------------------------------
    def _observe_step(self, result: Any, grads: dict[int, Tensor]) -> None:
        """Fisher-style: squared gradient of each updated neuron's slice (sparse learners)."""
        for layer, g in grads.items():
            self.neurons.add(layer, torch.as_tensor(result.neurons[layer], dtype=torch.long), g.pow(2).sum(1))

    def observe(self, examples: Sequence[Any]) -> None:
        """Importance from traffic (e.g. logged served turns): MAS neuron sensitivity, and for
        "ewc" the squared gradients of the loss (Fisher) or of the output norm (MAS)."""
        model, learner = self.learner.model, self.learner
        batch = build_batch(model.tokenizer, examples, max_seq_len=learner.max_seq_len, pad_id=learner.pad_id,
                            device=model.device)
        layouts = model.neuron_layouts()
        sens: dict[int, Tensor] = {}

        def sensitivity(layer: int):
            layout = layouts[layer]

            def run(x: Tensor) -> Tensor:
                out, h = layout.forward(x)
                with torch.no_grad():
                    proj = out.detach() @ layout.out_weight.detach()  # [..., d_ff] = y . W_out[:, i]
                    s = (h.detach() * proj).abs() * batch.mask[..., None].to(h)
                    sens[layer] = s.reshape(-1, s.shape[-1]).sum(0)
                return out
            return run

        overrides = {layer: sensitivity(layer) for layer in learner.plastic_layers}
        with torch.no_grad(), learner.guard.read(), neuron_context(overrides=overrides):
            model(batch.inputs)
        for layer, s in sens.items():
            self.neurons.add(layer, None, s)
        if self.policy == "ewc":
            self._observe_params(batch)

    def _observe_params(self, batch: Any) -> None:
        params = self.learner.params
        with self.learner.guard.read():
            logits = self.learner.model(batch.inputs)
            if self.importance_kind == "fisher":
                target, _ = masked_loss(logits, batch)
            else:
                target = (logits.float().pow(2).sum(-1) * batch.mask).sum() / batch.mask.sum().clamp(min=1)
            grads = torch.autograd.grad(target, params, allow_unused=True)
        for i, g in enumerate(grads):
            if g is not None:
                self.fisher[i].mul_(self.neurons.decay).add_(g.detach().pow(2))

    # -- the policy ------------------------------------------------------------------------------
    def consolidate(self) -> dict[int, int]:
        """Apply the policy to the current importance; returns layer -> neurons protected."""
        learner, out = self.learner, {}
        if self.policy == "lock":
            for layer in learner.plastic_layers:
                top = self.neurons.top(layer, self.fraction)
                if not self.accumulate:
                    held = self.locked.get(layer, torch.empty(0, dtype=torch.long))
                    kept = torch.isin(held, top)
                    if not kept.all():
                        learner.unprotect(layer, held[~kept])
                    mask = learner.protected(layer)
                    others = mask[top] if mask is not None else torch.zeros(len(top), dtype=torch.bool)
                    # ours: what we still hold, and what we now lock that nobody else protects
                    self.locked[layer] = top[~others | torch.isin(top, held[kept])]
                if len(top):
                    learner.protect(layer, top)
                mask = learner.protected(layer)
                out[layer] = 0 if mask is None else int(mask.sum())
        elif self.policy == "damp":
            for layer in learner.plastic_layers:
                s = self.neurons.scores[layer]
                mean = s[s > 0].mean() if (s > 0).any() else torch.tensor(1.0, dtype=torch.float64)
                learner.set_lr_scale(layer, (1.0 / (1.0 + self.strength * s / mean)).float())
                out[layer] = int((s > 0).sum())
        elif self.policy == "ewc":
            self.anchor = [p.detach().clone() for p in learner.params]
            # normalized to mean 1, so that ``strength`` does not depend on the loss scale
            mean = torch.stack([f.mean() for f in self.fisher.values()]).mean().clamp(min=1e-30)
            self.fisher_weights = {i: f / mean for i, f in self.fisher.items()}
            out = {-1: len(self.anchor)}
        return out

    def penalty(self) -> Tensor:
        """EWC/MAS penalty for the dense step: strength * sum F (theta - theta*)^2 (0 before the
        first ``consolidate``)."""
        if not self.anchor:
            return torch.zeros((), device=self.learner.model.device)
        total = sum((self.fisher_weights[i] * (p - a).pow(2)).sum()
                    for i, (p, a) in enumerate(zip(self.learner.params, self.anchor)))
        return self.strength * total
