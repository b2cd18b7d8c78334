"""Slow, obviously correct references for the MCSD mixer. Tests only.

Everything here is written straight from the definitions in DESIGN.md with explicit
O(T^2) weight matrices; the fast forms in :mod:`synclearn.model.scan` and
:mod:`synclearn.model.mcsd` must agree with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def naive_decay_scan(x: Tensor, log_decay: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """y_n = a^n s0 + sum_{m<n} a^(n-m) x_m and s_T, from an explicit [C, T, T] matrix.

    Shapes as in :func:`synclearn.model.scan.chunk_decay_scan`.
    """
    B, T, C, Dc = x.shape
    a = torch.exp(log_decay.to(x.dtype))  # [C]
    n = torch.arange(T + 1, device=x.device)
    W = torch.zeros(C, T + 1, T, dtype=x.dtype, device=x.device)  # row T is the final state
    for c in range(C):
        for i in range(T + 1):
            for m in range(i):
                W[c, i, m] = a[c] ** (i - m)
    ys = torch.einsum("cnm,bmcd->bncd", W, x)
    if state is not None:
        ys = ys + (a[None, :] ** n[:, None].to(x.dtype))[None, :, :, None] * state[:, None]
    return ys[:, :T], ys[:, T]


def naive_gated_scan(x: Tensor, log_decay: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The gated scan from its definition: y_n = prod_{k<n} a_k s0 + sum_{m<n} prod_{k=m..n-1} a_k x_m.

    x, log_decay: [B, T, C, Dc] (log a_n per token and feature); state: [B, C, Dc]. Products
    are formed factor by factor (explicit loops, no prefix sums).
    """
    B, T, C, Dc = x.shape
    a = torch.exp(log_decay)
    ys = []
    for n in range(T + 1):  # n = T is the final state
        acc = torch.zeros(B, C, Dc, dtype=x.dtype, device=x.device)
        for m in range(n):
            w = torch.ones(B, C, Dc, dtype=x.dtype, device=x.device)
            for k in range(m, n):
                w = w * a[:, k]
            acc = acc + w * x[:, m]
        if state is not None:
            w = torch.ones(B, C, Dc, dtype=x.dtype, device=x.device)
            for k in range(n):
                w = w * a[:, k]
            acc = acc + w * state
        ys.append(acc)
    return torch.stack(ys[:T], 1), ys[T]


def naive_slope_average(v: Tensor, b: Tensor, state: Tensor | None = None, pos: int = 0) -> Tensor:
    """The slope section's normalized average V'_n of strictly-past values.

    V'_n = (sum_{m<n} e^{-(n-m) b} V_m + e^{-n b} S0) / Z_{pos+n}, with
    Z_p = sum_{j=1..p} e^{-j b} summed term by term (so that it is the softmax normalizer
    over every past token, including the ``pos`` tokens summarized by S0). V'_0 = 0 when
    there is no past at all.

    Args:
        v: [B, T, C, Dc]; b: [C] slopes; state: [B, C, Dc] S0; pos: tokens before v.
    """
    ys, _ = naive_decay_scan(v, -b, state)
    T = v.shape[1]
    Z = torch.zeros(T, b.shape[0], dtype=v.dtype, device=v.device)
    for t in range(T):
        for j in range(1, pos + t + 1):
            Z[t] += torch.exp(-j * b.to(v.dtype))
    safe = torch.where(Z > 0, Z, torch.ones_like(Z))
    return torch.where((Z > 0)[None, :, :, None], ys / safe[None, :, :, None], torch.zeros_like(ys))


def naive_mixer(mixer, x: Tensor, slope_state: Tensor | None = None, decay_state: Tensor | None = None, pos: int = 0) -> Tensor:
    """The whole MCSD mixer from the definitions, using a :class:`MCSDMixer`'s weights.

    Args:
        mixer: an ``MCSDMixer``. x: [B, T, D]. States: [B, C, Dc]. pos: tokens already seen.

    Returns:
        [B, T, D] mixer output.
    """
    B, T, D = x.shape
    C = mixer.n_channels
    u, v, f, e = mixer.in_proj(x).chunk(4, dim=-1)
    v_avg = naive_slope_average(v.view(B, T, C, -1), mixer.slope.to(x.device), slope_state, pos)
    out_s = F.silu(v_avg.reshape(B, T, D)) * u
    log_a = torch.log(mixer.decay).to(x.device)
    if mixer.gate is None:
        e_past, _ = naive_decay_scan(e.view(B, T, C, -1), log_a, decay_state)
    else:  # input dt_n * E_n, log a_n = max(dt_n log a, -4), dt_n = softplus(x W_G + b_G)
        e_past, _ = naive_gated_scan(*mixer.gated_decay_inputs(x, e.view(B, T, C, -1), log_a), decay_state)
    e_norm = e_past * torch.rsqrt(e_past.pow(2).mean(-1, keepdim=True) + mixer.eps) * mixer.e_norm_weight
    out_d = e_norm.reshape(B, T, D) * torch.sigmoid(f)
    return mixer.out_proj(torch.cat([out_s, out_d], dim=-1))
