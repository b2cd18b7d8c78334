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
  (``topk``, ``predictor``, ``random``) ignore it; ``specificity`` ranks neurons by their
  activation on the batch relative to it (:func:`specificity`, a TF-IDF-like score).
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


def _pick(ranking: Tensor, candidates: Tensor, k: int, exploration: float, generator: torch.Generator | None) -> Tensor:
    """The ``k`` candidates ranked highest by ``ranking`` [d_ff], an ``exploration`` share of them
    drawn at random from the candidates below the cut instead. Ties go to the lower index."""
    n = int(candidates.sum())
    k = min(k, n)
    if k == 0:
        return torch.empty(0, dtype=torch.long)
    n_explore = min(int(math.floor(k * exploration)), k)
    masked = torch.where(candidates, ranking, torch.full_like(ranking, -math.inf))
    order = masked.argsort(descending=True, stable=True)  # ties broken by index: deterministic
    top = order[: k - n_explore]
    rest = order[k - n_explore : n]
    if n_explore and len(rest):
        pick = torch.randperm(len(rest), generator=generator)[:n_explore]
        top = torch.cat([top, rest[pick]])
    return top.sort().values


def select_topk(
    scores: Tensor, k: int, *, locked: Tensor | None = None, exploration: float = 0.0, generator: torch.Generator | None = None,
    background: Tensor | None = None,
) -> Tensor:
    """The strongest ``k`` unlocked neurons, with an ``exploration`` share drawn at random from
    the remaining unlocked neurons that fired."""
    scores = scores.detach().float().cpu()
    candidates = _allowed(scores, None if locked is None else locked.cpu()) & (scores > 0)
    return _pick(scores, candidates, k, exploration, generator)


def specificity(scores: Tensor, background: Tensor, eps: float | None = None) -> Tensor:
    """Specificity of each neuron to the batch relative to its background use, [d_ff] float64.

    With ``a`` the batch's activation mass (``scores``) and ``b`` the background mean activation
    per token, both turned into shares of their layer's total::

        p_i = a_i / sum_j a_j        q_i = b_i / sum_j b_j
        specificity_i = p_i * log((p_i + eps) / (q_i + eps)),   eps = 1 / (100 * d_ff) by default

    the neuron's term of the Kullback-Leibler divergence KL(p || q): like TF-IDF it grows with
    how much of the batch's activation the neuron carries (tf ~ p_i) and with how rarely it
    carries activation on ordinary input (idf ~ log 1/q_i); a neuron as busy in the background
    as in the batch (p_i = q_i) scores 0, one busier in the background scores below 0.
    ``eps`` keeps the ratio finite for neurons that never fire in the background.
    """
    a = scores.detach().double().cpu().clamp(min=0)
    b = background.detach().double().cpu().clamp(min=0)
    if a.shape != b.shape:
        raise ValueError(f"background shape {tuple(b.shape)} != scores shape {tuple(a.shape)}")
    eps = 1.0 / (100 * len(a)) if eps is None else eps
    p = a / a.sum().clamp(min=1e-300)
    q = b / b.sum() if b.sum() > 0 else torch.full_like(b, 1.0 / len(b))
    return p * torch.log((p + eps) / (q + eps))


def select_specificity(
    scores: Tensor, k: int, *, locked: Tensor | None = None, exploration: float = 0.0, generator: torch.Generator | None = None,
    background: Tensor | None = None,
) -> Tensor:
    """The ``k`` unlocked neurons that fired most specifically for this batch (:func:`specificity`:
    the batch's share of activation against the background share), with an ``exploration``
    share drawn at random from the other unlocked neurons that fired. Without ``background``
    it is :func:`select_topk`."""
    if background is None:
        return select_topk(scores, k, locked=locked, exploration=exploration, generator=generator)
    scores = scores.detach().float().cpu()
    candidates = _allowed(scores, None if locked is None else locked.cpu()) & (scores > 0)
    return _pick(specificity(scores, background), candidates, k, exploration, generator)


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
    "specificity": (select_specificity, "mass"),
}
