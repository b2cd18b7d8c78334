"""The inference decode step of one MCSD layer, as few kernels as the math allows.

:meth:`synclearn.model.mcsd.MCSDLM.step` runs every layer through :func:`layer_step` when
nothing asks for the module path (no autograd, fp32/fp64, plain ``nn.Linear`` weights, no
:func:`~synclearn.model.neurons.neuron_context` in force). At batch 1 on a CPU a decode step
is ~40 small kernels per layer, and for a small model their dispatch costs more than the
arithmetic; this function computes the same layer as ``MCSDBlock.step`` (the reference it is
tested against) with fewer of them:

* the two residual adds are folded into the output matmuls (``addmm``), no ``cat`` before
  ``out_proj`` (the halves are written into one scratch row) and no module calls;
* RMSNorm is written out (mean of squares, rsqrt, two products);
* sparse decode at batch 1 gathers the k chosen neurons' up rows (one ``index_select``) and
  sums their down rows weighted by the activations with ``embedding_bag``, which reads only
  those k rows of the neuron-major [d_ff, D] storage and writes no gathered copy.

:func:`layer_step` is a pure function of tensors (it writes only the ``out`` buffers it is
given), so ``torch.compile`` can fuse it; :class:`DecodeKernel` holds :func:`layers_step` (all
layers in turn), compiled when asked and available, falling back to the eager function if
compilation fails. Measured at batch 1, one CPU thread: compiling pays at small widths, where
dispatch dominates (mcsd-chat ~1.4x), and not where the step reads more weights than the
caches hold (mcsd-small: the matrix-vector products are bound by memory bandwidth).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from synclearn.model.scan import GATE_LOG_FLOOR


class LayerWeights(NamedTuple):
    """One layer's tensors for :func:`layer_step` (views of the module parameters)."""

    norm_mix: Tensor  # [D]
    in_proj: Tensor  # [4D, D]: W_U; W_V; W_F; W_E
    e_norm: Tensor  # [C, Dc]
    out_proj_t: Tensor  # [2D, D] (transposed view)
    norm_mlp: Tensor  # [D]
    up: Tensor  # [d_ff, D]
    down_rows: Tensor  # [d_ff, D], neuron i is row i
    pred_proj: Tensor | None  # [r, D]
    pred_score: Tensor | None  # [d_ff, r]
    pred_bias: Tensor | None  # [d_ff]
    gate_w: Tensor | None = None  # [D, D] W_G of a gated decay section
    gate_b: Tensor | None = None  # [D]


def rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dim: x / sqrt(mean(x^2) + eps) * weight."""
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps)) * weight


def layer_step(
    x: Tensor,
    slope: Tensor,
    decay: Tensor,
    inv_z: Tensor,
    w: LayerWeights,
    exp_neg_b: Tensor,
    a: Tensor,
    eps: float,
    k: int,
    out: tuple[Tensor, Tensor, Tensor],
) -> Tensor:
    """One layer of the recurrent form, inference only.

    Args:
        x: [B, D] the residual stream entering the layer.
        slope, decay: [B, C, Dc] the layer's state (read only).
        inv_z: [B, C] 1 / Z_n.
        w: the layer's weights.
        exp_neg_b, a: [C, 1] the slope section's e^{-b} and the decay section's a.
        eps: the RMSNorm epsilon (every norm of the model uses it).
        k: neurons computed per token; ``k >= d_ff`` is the dense MLP. With k < d_ff the
            predictor chooses them (batch 1 only: each token has its own neurons).
        out: (new slope [B, C, Dc], new decay [B, C, Dc], scratch [B, 2D]); the new states
            are written into the first two.

    Returns:
        [B, D] the residual stream leaving the layer.
    """
    B, D = x.shape
    C, Dc = slope.shape[1], slope.shape[2]
    s_dst, d_dst, mix = out
    xm = rms(x, w.norm_mix, eps)
    proj = F.linear(xm, w.in_proj).view(B, 4, C, Dc)
    u, v, f, e = proj.unbind(1)  # [B, C, Dc] each
    torch.mul(torch.add(slope, v, out=s_dst), exp_neg_b, out=s_dst)  # e^{-b} (S_n + V_n)
    if w.gate_w is None:
        torch.mul(torch.add(decay, e, out=d_dst), a, out=d_dst)  # a (E'_n + E_n)
    else:  # gated: a_t (E'_n + dt E_n), a_t = max(a^dt, e^-4), dt = softplus(x W_G + b_G)
        dt = F.softplus(F.linear(xm, w.gate_w, w.gate_b)).view(B, C, Dc)
        a_t = torch.mul(dt, torch.log(a)).clamp_(min=-GATE_LOG_FLOOR).exp_()
        torch.mul(torch.addcmul(decay, dt, e, out=d_dst), a_t, out=d_dst)
    mix_s, mix_d = mix[:, :D].view(B, C, Dc), mix[:, D:].view(B, C, Dc)
    torch.mul(F.silu(slope * inv_z[..., None]), u, out=mix_s)  # SiLU(S_n / Z_n) * U
    torch.mul(rms(decay, w.e_norm, eps), torch.sigmoid(f), out=mix_d)  # norm(E'_n) * sigmoid(F)
    x = torch.addmm(x, mix, w.out_proj_t)  # x + out_proj(...)
    xn = rms(x, w.norm_mlp, eps)
    d_ff = w.up.shape[0]
    if k >= d_ff:
        return torch.addmm(x, F.relu(F.linear(xn, w.up)).square_(), w.down_rows)
    scores = F.linear(F.linear(xn, w.pred_proj), w.pred_score, w.pred_bias)  # [1, d_ff]
    idx = scores.topk(k, dim=-1, sorted=False).indices  # [1, k]
    h = F.relu(F.linear(xn, w.up.index_select(0, idx[0]))).square_()  # [1, k]
    return x + F.embedding_bag(idx, w.down_rows, per_sample_weights=h, mode="sum")


def layers_step(
    x: Tensor,
    slopes: Tensor,
    decays: Tensor,
    inv_z: Tensor,
    weights: list[LayerWeights],
    consts: tuple[Tensor, Tensor, float, int],
    out: tuple[Tensor, Tensor, Tensor],
) -> Tensor:
    """Every layer in turn. slopes, decays: [n_layers, B, C, Dc]; consts: (e^{-b}, a, eps, k)
    as :func:`layer_step` takes them; out: (new slopes, new decays [n_layers, B, C, Dc],
    scratch [B, 2D]). Returns the stream leaving the last layer [B, D]."""
    for i, w in enumerate(weights):
        x = layer_step(x, slopes[i], decays[i], inv_z, w, *consts, (out[0][i], out[1][i], out[2]))
    return x


class DecodeKernel:
    """:func:`layers_step`, eager or compiled with ``torch.compile`` (optional: a machine
    without a working compiler keeps the eager function, with one warning)."""

    def __init__(self) -> None:
        self.fn = layers_step
        self.compiled = False

    def compile(self, enabled: bool = True) -> None:
        # one graph over all layers: a graph per layer pays the guards and the Python wrapper
        # once per layer, which is what eager decoding loses its time to at small widths
        self.fn = torch.compile(layers_step, dynamic=False, fullgraph=True) if enabled else layers_step
        self.compiled = enabled

    def __deepcopy__(self, memo) -> "DecodeKernel":  # a copied model recompiles on its own
        copy = DecodeKernel()
        if self.compiled:
            copy.compile()
        return copy

    def __getstate__(self) -> dict:
        return {"compiled": self.compiled}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        if state["compiled"]:
            self.compile()

    def __call__(self, *args) -> Tensor:
        if not self.compiled:
            return layers_step(*args)
        try:
            return self.fn(*args)
        except Exception as exc:  # noqa: BLE001 -- no compiler here: the eager function is the same math
            warnings.warn(f"torch.compile of the decode step failed ({type(exc).__name__}: {exc}); decoding eagerly",
                          RuntimeWarning, stacklevel=2)
            self.compile(False)
            return layers_step(*args)
