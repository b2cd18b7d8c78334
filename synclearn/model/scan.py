"""Per-channel scalar-decay scans: the one recurrence both MCSD sections are built on.

For a sequence x [B, T, C, Dc], a per-channel decay a_c = exp(log_decay[c]) in (0, 1) and an
initial state s0 [B, C, Dc], the scan computes, for every position n (0-based):

    y_n   = a^n * s0 + sum_{m < n} a^(n-m) x_m          (strictly past tokens)
    s_T   = a^T * s0 + sum_{m < T} a^(T-m) x_m          (the state after the sequence)

so ``s_{n+1} = a * (s_n + x_n)`` and ``y_n = s_n``. Two evaluation forms live here:

* :func:`chunk_decay_scan` -- O(T * chunk) work, parallel within chunks, for training/prefill;
* :func:`recurrent_decay_step` -- O(1) per token, for decoding.

The O(T^2) reference is :func:`synclearn.model.naive.naive_decay_scan`; tests hold the three
forms equal (outputs, final states and gradients).

Every exponent used here is <= 0, so nothing overflows for any length. Scans run in at least
float32 (bf16/fp16 inputs are upcast and the output cast back).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _scan_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def chunk_decay_scan(
    x: Tensor, log_decay: Tensor, state: Tensor | None = None, chunk_size: int = 64
) -> tuple[Tensor, Tensor]:
    """Chunked scan.

    Args:
        x: [B, T, C, Dc] inputs, T >= 1.
        log_decay: [C] log of the per-channel decay (< 0).
        state: [B, C, Dc] initial state s0, or None for zeros.
        chunk_size: block length L; work is O(T * L + (T / L)^2).

    Returns:
        y: [B, T, C, Dc] with y_n = s_n (strictly-past weighted sums).
        final: [B, C, Dc] the state s_T after the last token.
    """
    if torch.is_autocast_enabled(x.device.type):
        # autocast would run the einsums below in bf16/fp16 whatever the inputs' dtype: the
        # sums over thousands of decayed terms need at least fp32 (out_dtype stays the input's)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return chunk_decay_scan(x, log_decay, state, chunk_size)
    B, T, C, Dc = x.shape
    if T < 1:
        raise ValueError("chunk_decay_scan needs at least one token (T >= 1)")
    out_dtype, dt = x.dtype, _scan_dtype(x.dtype)
    x = x.to(dt)
    la = log_decay.to(device=x.device, dtype=dt)
    L = min(chunk_size, T)
    pad = (-T) % L
    xp = F.pad(x, (0, 0, 0, 0, 0, pad)) if pad else x
    NC = (T + pad) // L
    xc = xp.view(B, NC, L, C, Dc)

    i = torch.arange(L, device=x.device)
    diff = (i[:, None] - i[None, :]).to(dt)  # i - j
    intra = torch.exp(diff.clamp(min=0)[None] * la[:, None, None]) * (diff > 0)  # [C, L, L]
    y = torch.einsum("cij,bnjcd->bnicd", intra, xc)  # within-chunk past

    # What each chunk adds to the state at the next chunk start: sum_j a^(L-j) x_j.
    w_end = torch.exp((L - i).to(dt)[None, :] * la[:, None])  # [C, L]
    contrib = torch.einsum("cj,bnjcd->bncd", w_end, xc)  # [B, NC, C, Dc]
    # State at the start of chunk k: a^(kL) s0 + sum_{j<k} a^((k-1-j)L) contrib_j.
    k = torch.arange(NC, device=x.device)
    dk = (k[:, None] - k[None, :] - 1).to(dt)
    inter = torch.exp(dk.clamp(min=0)[None] * L * la[:, None, None]) * (dk >= 0)  # [C, NC, NC]
    starts = torch.einsum("ckj,bjcd->bkcd", inter, contrib)  # [B, NC, C, Dc]
    if state is not None:
        w0 = torch.exp((k * L).to(dt)[:, None] * la[None, :])  # [NC, C]
        starts = starts + w0[None, :, :, None] * state.to(dt)[:, None]
    w_in = torch.exp(i.to(dt)[None, :] * la[:, None])  # a^i, [C, L]
    y = y + torch.einsum("ci,bncd->bnicd", w_in, starts)
    y = y.reshape(B, NC * L, C, Dc)[:, :T]
    final = torch.exp(la)[None, :, None] * (y[:, -1] + x[:, -1])  # s_T = a (s_{T-1} + x_{T-1})
    return y.to(out_dtype), final.to(out_dtype)


def recurrent_decay_step(x_t: Tensor, log_decay: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One decoding step.

    Args:
        x_t: [B, C, Dc] the current token's input.
        log_decay: [C].
        state: [B, C, Dc] s_n (sum over the strictly past tokens).

    Returns:
        y_t: [B, C, Dc] = s_n (the current token does not see itself).
        new_state: [B, C, Dc] = a * (s_n + x_n).
    """
    dt = _scan_dtype(x_t.dtype)
    a = torch.exp(log_decay.to(device=x_t.device, dtype=dt))[None, :, None]
    new = a * (state.to(dt) + x_t.to(dt))
    return state, new.to(state.dtype)
