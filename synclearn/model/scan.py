"""Per-channel scalar-decay scans: the one recurrence both MCSD sections are built on.

For a sequence x [B, T, C, Dc], a per-channel decay a_c = exp(log_decay[c]) in (0, 1) and an
initial state s0 [B, C, Dc], the scan computes, for every position n (0-based):

    y_n   = a^n * s0 + sum_{m < n} a^(n-m) x_m          (strictly past tokens)
    s_T   = a^T * s0 + sum_{m < T} a^(T-m) x_m          (the state after the sequence)

so ``s_{n+1} = a * (s_n + x_n)`` and ``y_n = s_n``. Two evaluation forms live here:

* :func:`chunk_decay_scan` -- O(T * chunk) work, parallel within chunks, for training/prefill;
* :func:`recurrent_decay_step` -- O(1) per token, for decoding.

The gated (selective) variant lets every token set its own decay per feature, log a_n [B, T,
C, Dc], with the same recurrence ``s_{n+1} = a_n * (s_n + x_n)``, so

    y_n = prod_{k<n} a_k * s0 + sum_{m < n} (prod_{k=m..n-1} a_k) x_m

computed by :func:`chunk_gated_scan` (and by :func:`recurrent_decay_step` given that token's
log a_n). Within a chunk the weight of x_m at n is exp(P_n - P_m) with P the exclusive prefix
sum of log a, computed as exp(P_n) * exp(-P_m): the chunks are GATE_CHUNK tokens and each
log a_n is at least -GATE_LOG_FLOOR, so exp(-P_m) stays below e^64 (finite in fp32), and the
state is carried between chunks with exponents <= 0.

The O(T^2) references are :func:`synclearn.model.naive.naive_decay_scan` and
:func:`synclearn.model.naive.naive_gated_scan`; tests hold the forms equal (outputs, final
states and gradients).

Every exponent of the fixed scan is <= 0 and every one of the gated scan at most 64, so
nothing overflows for any length. Scans run in at least
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


#: the strongest decay one token may apply, log a_n >= -GATE_LOG_FLOOR (keeps e^-4 ~ 1.8% of
#: the past: two such tokens forget all but 0.03%). It bounds exp(-P) within a gated chunk.
GATE_LOG_FLOOR = 4.0
#: tokens per chunk of :func:`chunk_gated_scan`: exp(GATE_LOG_FLOOR * GATE_CHUNK) = e^64 fits fp32
GATE_CHUNK = 16


def chunk_gated_scan(x: Tensor, log_decay: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Chunked scan with a decay per token and feature (the gated decay section).

    Within a chunk the weight exp(P_n - P_m) factors into exp(P_n) * exp(-P_m), so the chunk's
    past sums are one exclusive cumulative sum of exp(-P_m) x_m: O(T * D) work, no [L, L]
    matrix. exp(-P_m) grows at most to exp(GATE_LOG_FLOOR * GATE_CHUNK) (the caller keeps
    log a_n >= -GATE_LOG_FLOOR; the scan runs in >= fp32), and the chunk starts are carried
    from chunk to chunk, T / GATE_CHUNK steps of O(B * D).

    Args:
        x: [B, T, C, Dc] inputs, T >= 1.
        log_decay: [B, T, C, Dc] log a_n in [-GATE_LOG_FLOOR, 0], the decay token n applies
            to the state it leaves (its own input included).
        state: [B, C, Dc] initial state s0, or None for zeros.

    Returns:
        y: [B, T, C, Dc] with y_n = s_n; final: [B, C, Dc] the state s_T.
    """
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return chunk_gated_scan(x, log_decay, state)
    B, T, C, Dc = x.shape
    if T < 1:
        raise ValueError("chunk_gated_scan needs at least one token (T >= 1)")
    if log_decay.shape != x.shape:
        raise ValueError(f"log_decay has shape {tuple(log_decay.shape)}, expected the inputs' {tuple(x.shape)}")
    out_dtype, dt = x.dtype, _scan_dtype(x.dtype)
    x, la = x.to(dt), log_decay.to(dt)
    L = min(GATE_CHUNK, T)
    pad = (-T) % L
    if pad:  # padded tokens add nothing and keep the state (log a = 0): s_T is the last chunk's end
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        la = F.pad(la, (0, 0, 0, 0, 0, pad))
    NC = (T + pad) // L
    xc, lc = x.view(B, NC, L, C, Dc), la.view(B, NC, L, C, Dc)
    incl = lc.cumsum(2)
    P = incl - lc  # exclusive prefix sums: P_i = sum_{k<i} log a_k within the chunk, in [-64, 0]
    total = incl[:, :, -1]  # [B, NC, C, Dc] log of the whole chunk's decay
    decay_to = torch.exp(P)
    weighted = torch.exp(-P) * xc  # x_m relative to the chunk start: <= e^64 |x_m|
    csum = weighted.cumsum(2)
    y = decay_to * torch.cat([torch.zeros_like(csum[:, :, :1]), csum[:, :, :-1]], 2)  # sum over m < i
    contrib = (torch.exp(total[:, :, None] - P) * xc).sum(2)  # what the chunk adds to its end state
    s = state.to(dt) if state is not None else torch.zeros(B, C, Dc, dtype=dt, device=x.device)
    starts = []
    for k in range(NC):  # chunk starts in turn: T / L steps, each O(B * D)
        starts.append(s)
        s = torch.exp(total[:, k]) * s + contrib[:, k]
    y = y + decay_to * torch.stack(starts, 1)[:, :, None]
    return y.reshape(B, NC * L, C, Dc)[:, :T].to(out_dtype), s.to(out_dtype)


def recurrent_decay_step(x_t: Tensor, log_decay: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One decoding step.

    Args:
        x_t: [B, C, Dc] the current token's input.
        log_decay: [C] (a fixed decay per channel), or [B, C, Dc] (this token's gated decay).
        state: [B, C, Dc] s_n (sum over the strictly past tokens).

    Returns:
        y_t: [B, C, Dc] = s_n (the current token does not see itself).
        new_state: [B, C, Dc] = a * (s_n + x_n).
    """
    dt = _scan_dtype(x_t.dtype)
    a = torch.exp(log_decay.to(device=x_t.device, dtype=dt))
    new = (a[None, :, None] if a.dim() == 1 else a) * (state.to(dt) + x_t.to(dt))
    return state, new.to(state.dtype)
