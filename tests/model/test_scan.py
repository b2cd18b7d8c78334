"""The three forms of the scalar-decay scan agree: outputs, final states and gradients."""

import pytest
import torch

from synclearn.model.naive import naive_decay_scan
from synclearn.model.scan import chunk_decay_scan, recurrent_decay_step

C, DC = 3, 4
LOG_DECAY = torch.log(torch.tensor([0.5, 0.9, 1 - 2**-10], dtype=torch.float64))


def recurrent_scan(x, log_decay, state):
    ys = []
    for t in range(x.shape[1]):
        y, state = recurrent_decay_step(x[:, t], log_decay, state)
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
