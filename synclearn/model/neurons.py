"""The selectable-neuron MLP: brain-like activation with real zeros.

Neuron i of a layer is row i of ``up.weight`` [d_ff, D] and column i of ``down.weight``
[D, d_ff]. The activation is squared ReLU, h = relu(x W_up^T)^2, so an input really
switches most neurons off (exact zeros), and a neuron that is off contributes nothing
to the output and receives no gradient.

Two ways to run it:

* dense (the reference): every neuron computed;
* sparse (inference): per token, only k selected neurons are computed. They are chosen by
  ``mode="topk"`` (the k largest pre-activations: the up projection is computed in full,
  the down projection only for k columns) or ``mode="predictor"`` (a low-rank predictor
  d -> r -> d_ff scores neurons first, as in Deja Vu / PowerInfer, and only the k chosen
  rows and columns are computed). With k = d_ff both equal the dense path.

What a call activated is reported through a :class:`NeuronTrace` passed with the call (never
module state, so concurrent serving and learning threads cannot mix their records).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SparseMode = Literal["topk", "predictor"]


@dataclass(frozen=True)
class SparseSpec:
    """Sparse inference: compute ``k`` neurons per token, chosen by ``mode``."""

    k: int
    mode: SparseMode = "topk"

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"SparseSpec.k={self.k!r}: expected a positive integer")
        if self.mode not in ("topk", "predictor"):
            raise ValueError(f"SparseSpec.mode={self.mode!r}: expected 'topk' or 'predictor'")


@dataclass
class NeuronTrace:
    """Per-call record of which neurons fired, filled by each MLP the call passes through.

    Attributes:
        mask: optional [B, T] token weights; only weighted tokens count (e.g. response tokens).
        mass: layer index -> [d_ff] float32, sum over counted tokens of the activation h.
        active: layer index -> [d_ff] float32, number of counted tokens where h > 0.
        tokens: number of counted tokens (sum of the mask).
    """

    mask: Tensor | None = None
    mass: dict[int, Tensor] = field(default_factory=dict)
    active: dict[int, Tensor] = field(default_factory=dict)
    tokens: float = 0.0


def squared_relu(x: Tensor) -> Tensor:
    return F.relu(x).square()


class LowRankPredictor(nn.Module):
    """Scores how likely each neuron is to fire: logits = W2 (W1 x) + c, rank r."""

    def __init__(self, d_model: int, rank: int, d_ff: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, rank, bias=False)
        self.score = nn.Linear(rank, d_ff, bias=True)

    def forward(self, x: Tensor) -> Tensor:  # [N, D] -> [N, d_ff]
        return self.score(self.proj(x))


class SelectableMLP(nn.Module):
    """Squared-ReLU MLP whose neurons can be selected per token.

    Args:
        d_model: input/output width D.
        d_ff: number of neurons.
        predictor_rank: rank of the active-neuron predictor (0: no predictor).
    """

    def __init__(self, d_model: int, d_ff: int, predictor_rank: int = 0) -> None:
        super().__init__()
        self.d_model, self.d_ff = d_model, d_ff
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)
        self.predictor = LowRankPredictor(d_model, predictor_rank, d_ff) if predictor_rank else None

    def forward(
        self, x: Tensor, *, sparse: SparseSpec | None = None, trace: NeuronTrace | None = None, layer: int = 0
    ) -> Tensor:
        """x: [..., D] -> [..., D]. ``sparse`` picks the sparse path; ``trace`` records activity."""
        if sparse is not None and sparse.k < self.d_ff:
            if trace is not None:
                raise ValueError("a NeuronTrace needs the dense path (sparse=None)")
            return self.sparse_forward(x, sparse)
        h = squared_relu(self.up(x))  # [..., d_ff]
        if trace is not None:
            self._record(h, trace, layer)
        return self.down(h)

    def sparse_forward(self, x: Tensor, spec: SparseSpec) -> Tensor:
        """Compute only ``spec.k`` neurons per token. x: [..., D] -> [..., D]."""
        shape = x.shape
        xf = x.reshape(-1, self.d_model)  # (N, D)
        k = min(spec.k, self.d_ff)
        if spec.mode == "predictor":
            if self.predictor is None:
                raise ValueError("SparseSpec(mode='predictor') needs a model built with predictor_rank > 0")
            idx = self.predictor(xf).topk(k, dim=-1).indices  # (N, k)
            w_up = self.up.weight[idx]  # (N, k, D)
            pre = torch.einsum("nkd,nd->nk", w_up, xf)
        else:
            pre_all = self.up(xf)  # (N, d_ff)
            pre, idx = pre_all.topk(k, dim=-1)  # (N, k)
        h = squared_relu(pre)  # (N, k)
        w_down = self.down.weight.t()[idx]  # (N, k, D)
        out = torch.einsum("nk,nkd->nd", h, w_down)
        return out.reshape(shape)

    @torch.no_grad()
    def _record(self, h: Tensor, trace: NeuronTrace, layer: int) -> None:
        hf = h.detach().reshape(-1, self.d_ff).float()
        if trace.mask is not None:
            w = trace.mask.reshape(-1).to(hf)
            mass, active = w @ hf, w @ (hf > 0).float()
            tokens = float(w.sum())
        else:
            mass, active, tokens = hf.sum(0), (hf > 0).float().sum(0), float(hf.shape[0])
        trace.mass[layer] = trace.mass[layer] + mass if layer in trace.mass else mass
        trace.active[layer] = trace.active[layer] + active if layer in trace.active else active
        trace.tokens = tokens


def fit_predictor(mlp: SelectableMLP, xs: Tensor, *, steps: int = 300, lr: float = 1e-2, seed: int = 0) -> float:
    """Train ``mlp.predictor`` to name the neurons that fire for inputs ``xs`` [N, D].

    The predictor regresses the pre-activations (mean squared error), because sparse
    inference keeps the k neurons with the largest scores: what matters is the ranking of
    the strongest neurons, not only the sign. Only the predictor's parameters change.
    Returns the recall of the true top-k neurons among the predicted top-k on ``xs``
    (k = 10% of d_ff), a number in [0, 1].
    """
    if mlp.predictor is None:
        raise ValueError("this MLP has no predictor (predictor_rank=0)")
    xs = xs.detach().reshape(-1, mlp.d_model)
    with torch.no_grad():
        pre = mlp.up(xs)  # (N, d_ff)
    gen = torch.Generator().manual_seed(seed)
    params = list(mlp.predictor.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    batch = min(1024, xs.shape[0])
    with torch.enable_grad():
        for _ in range(steps):
            rows = torch.randint(0, xs.shape[0], (batch,), generator=gen).to(xs.device)
            loss = F.mse_loss(mlp.predictor(xs[rows]), pre[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        k = max(1, mlp.d_ff // 10)
        true = pre.topk(k, dim=-1).indices
        guess = mlp.predictor(xs).topk(k, dim=-1).indices
        hits = (true[:, :, None] == guess[:, None, :]).any(-1).float().mean()
    return float(hits)
