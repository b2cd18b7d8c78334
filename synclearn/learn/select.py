"""Neuron selection policies: which neurons of a plastic layer one learning step may change.

One signature for every policy (a plug-in point, as peft does it)::

    policy(scores: Tensor [d_ff], k: int, *, locked: BoolTensor [d_ff] | None,
           exploration: float, generator: torch.Generator,
           background: Tensor [d_ff] | None = None) -> LongTensor [<= k], sorted

* ``scores``: how strongly the batch activated each neuron (activation mass over the
  batch's loss tokens, see :class:`~synclearn.model.neurons.NeuronTrace`), or the low-rank
  predictor's estimate of it (``"predictor"``).
* ``locked``: neurons the memory manager protects; never selected.
* ``exploration``: share of the budget given to neurons that fired but were not among the
  strongest, drawn at random, so neurons just below the cut also get to learn.
* ``background``: per-neuron background statistics of the layer (mean activation on ordinary
  traffic, set with ``Learner.set_background``), or None. Policies that do not use it
  (``topk``, ``predictor``, ``random``) ignore it.
* Returns at most ``k`` distinct, sorted indices. Only neurons with a positive score are
  picked by the activation-based policies: a neuron that did not fire has no gradient, and
  touching it would only spend optimizer state (and weight decay) on it.

``SELECTORS`` maps policy names to ``(function, score source)``; the score source is the
:class:`NeuronTrace` field the learner passes as ``scores``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _allowed(scores: Tensor, locked: Tensor | None) -> Tensor:
    allowed = torch.ones_like(scores, dtype=torch.bool)
    if locked is not None:
        if locked.shape != scores.shape:
            raise ValueError(f"locked mask shape {tuple(locked.shape)} != scores shape {tuple(scores.shape)}")
        allowed &= ~locked.to(torch.bool)
    return allowed


def select_topk(
    scores: Tensor, k: int, *, locked: Tensor | None = None, exploration: float = 0.0, generator: torch.Generator | None = None,
    background: Tensor | None = None,
) -> Tensor:
    """The strongest ``k`` unlocked neurons, with an ``exploration`` share drawn at random from
    the remaining unlocked neurons that fired."""
    scores = scores.detach().float().cpu()
    candidates = _allowed(scores, None if locked is None else locked.cpu()) & (scores > 0)
    n = int(candidates.sum())
    k = min(k, n)
    if k == 0:
        return torch.empty(0, dtype=torch.long)
    n_explore = min(int(math.floor(k * exploration)), k)
    masked = torch.where(candidates, scores, torch.full_like(scores, -1.0))
    order = masked.argsort(descending=True, stable=True)  # ties broken by index: deterministic
    top = order[: k - n_explore]
    rest = order[k - n_explore : n]
    if n_explore and len(rest):
        pick = torch.randperm(len(rest), generator=generator)[:n_explore]
        top = torch.cat([top, rest[pick]])
    return top.sort().values


def select_random(
    scores: Tensor, k: int, *, locked: Tensor | None = None, exploration: float = 0.0, generator: torch.Generator | None = None,
    background: Tensor | None = None,
) -> Tensor:
    """``k`` unlocked neurons uniformly at random, whatever fired (the baseline)."""
    allowed = _allowed(scores.detach().cpu(), None if locked is None else locked.cpu())
    pool = allowed.nonzero().flatten()
    pick = torch.randperm(len(pool), generator=generator)[: min(k, len(pool))]
    return pool[pick].sort().values


SELECTORS = {
    "topk": (select_topk, "mass"),
    "predictor": (select_topk, "predicted_mass"),
    "random": (select_random, "mass"),
}
