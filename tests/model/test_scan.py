"""The three forms of the scalar-decay scan agree: outputs, final states and gradients."""

import math

import pytest
import torch

from synclearn.model.naive import naive_decay_scan, naive_gated_scan
from synclearn.model.scan import GATE_LOG_FLOOR, chunk_decay_scan, chunk_gated_scan, recurrent_decay_step

C, DC = 3, 4
LOG_DECAY = torch.log(torch.tensor([0.5, 0.9, 1 - 2**-10], dtype=torch.float64))


def recurrent_scan(x, log_decay, state):
    """Token by token; ``log_decay``: [C], or one [B, C, Dc] per token (gated)."""
    ys = []
    for t in range(x.shape[1]):
        y, state = recurrent_decay_step(x[:, t], log_decay[t] if isinstance(log_decay, tuple) else log_decay, state)
        ys.append(y)
    return torch.stack(ys, 1), state


def run_forms(T, dtype, with_state, chunk_size):
    g = torch.Generator().manual_seed(T)
    x = torch.randn(2, T, C, DC, generator=g, dtype=dtype, requires_grad=True)
    s0 = (torch.randn(2, C, DC, generator=g, dtype=dtype) if with_state else torch.zeros(2, C, DC, dtype=dtype)).requires_grad_()
    la = LOG_DECAY.to(dtype)
    w = torch.randn(2, T, C, DC, generator=g, dtype=dtype)
    w_state = torch.randn(2, C, DC, generator=g, dtype=dtype)
    results = {}
    for name, fn in {
        "naive": lambda: naive_decay_scan(x, la, s0),
        "chunk": lambda: chunk_decay_scan(x, la, s0, chunk_size),
        "recurrent": lambda: recurrent_scan(x, la, s0),
    }.items():
        y, s = fn()
        gx, gs = torch.autograd.grad((y * w).sum() + (s * w_state).sum(), (x, s0))
        results[name] = (y.detach(), s.detach(), gx, gs)
    return results


@pytest.mark.parametrize("T", [1, 2, 63, 64, 100])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_forms_agree_float64(T, with_state, chunk_size):
    r = run_forms(T, torch.float64, with_state, chunk_size)
    for name in ("chunk", "recurrent"):
        for ref, got, what in zip(r["naive"], r[name], ("output", "state", "grad x", "grad state")):
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10, msg=f"{name} {what}")


@pytest.mark.parametrize("T", [1, 63, 100])
def test_forms_agree_float32(T):
    r = run_forms(T, torch.float32, True, 32)
    for name in ("chunk", "recurrent"):
        for ref, got in zip(r["naive"], r[name]):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_chunked_prefix_then_rest_equals_one_pass():
    x = torch.randn(1, 100, C, DC, dtype=torch.float64)
    y, s = chunk_decay_scan(x, LOG_DECAY, None, 16)
    y1, s1 = chunk_decay_scan(x[:, :37], LOG_DECAY, None, 16)
    y2, s2 = chunk_decay_scan(x[:, 37:], LOG_DECAY, s1, 16)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s2, s, rtol=1e-12, atol=1e-12)


def test_long_sequence_stays_finite():
    x = torch.randn(1, 5000, C, DC)
    y, s = chunk_decay_scan(x, LOG_DECAY.float(), None, 64)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()


def test_bf16_input_is_scanned_in_float32():
    x = torch.randn(1, 50, C, DC)
    y32, _ = chunk_decay_scan(x, LOG_DECAY.float())
    y16, s16 = chunk_decay_scan(x.bfloat16(), LOG_DECAY.float())
    assert y16.dtype == torch.bfloat16 and s16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=0.05, atol=0.1)


def test_autocast_does_not_lower_the_scan_precision():
    """Under autocast (Fabric's bf16-mixed) the einsums would run in bf16; the scan opts out."""
    x = torch.randn(2, 256, C, DC) * 5
    ref = chunk_decay_scan(x, LOG_DECAY.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunk_decay_scan(x, LOG_DECAY.float())
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)


def test_empty_sequence_is_an_error():
    with pytest.raises(ValueError, match="T >= 1"):
        chunk_decay_scan(torch.zeros(1, 0, C, DC), LOG_DECAY)


def gated_inputs(T, dtype, seed=0):
    """Inputs, per-token log decays over the whole allowed range (some at the floor) and a state."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, T, C, DC, generator=g, dtype=dtype, requires_grad=True)
    la = (-torch.rand(2, T, C, DC, generator=g, dtype=dtype) * (GATE_LOG_FLOOR + 1)).clamp(min=-GATE_LOG_FLOOR)
    la = la.detach().requires_grad_()
    s0 = torch.randn(2, C, DC, generator=g, dtype=dtype, requires_grad=True)
    return x, la, s0


@pytest.mark.parametrize("T", [1, 15, 16, 17, 40])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_gated_forms_agree(T, dtype, tol):
    x, la, s0 = gated_inputs(T, dtype)
    w = torch.randn(2, T, C, DC, dtype=dtype)
    results = {}
    for name, fn in {
        "naive": lambda: naive_gated_scan(x, la, s0),
        "chunk": lambda: chunk_gated_scan(x, la, s0),
        "recurrent": lambda: recurrent_scan(x, la.unbind(1), s0),
    }.items():
        y, s = fn()
        grads = torch.autograd.grad((y * w).sum() + s.sum(), (x, la, s0))
        results[name] = (y.detach(), s.detach(), *grads)
    for name in ("chunk", "recurrent"):
        for ref, got, what in zip(results["naive"], results[name], ("output", "state", "grad x", "grad log a", "grad state")):
            torch.testing.assert_close(got, ref, rtol=tol, atol=tol, msg=f"{name} {what}")


def test_gated_scan_with_constant_decay_is_the_fixed_scan():
    x = torch.randn(2, 50, C, DC, dtype=torch.float64)
    s0 = torch.randn(2, C, DC, dtype=torch.float64)
    la = LOG_DECAY[None, None, :, None].expand_as(x).contiguous()
    for got, ref in zip(chunk_gated_scan(x, la, s0), chunk_decay_scan(x, LOG_DECAY, s0, 16)):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_gated_scan_stays_finite_when_every_token_forgets_hardest():
    x = torch.randn(1, 300, C, DC) * 100
    la = torch.full_like(x, -GATE_LOG_FLOOR)
    y, s = chunk_gated_scan(x, la)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    # each output holds about its last input only (e^-4 of it), the rest decayed away
    torch.testing.assert_close(y[:, 1:], x[:, :-1] * math.exp(-GATE_LOG_FLOOR), rtol=0.05, atol=0.05 * 100)


def test_gated_scan_names_a_shape_mismatch():
    with pytest.raises(ValueError, match="log_decay has shape"):
        chunk_gated_scan(torch.zeros(1, 4, C, DC), torch.zeros(1, 4, C))
