"""MCSD mixer and model: the naive, chunked and recurrent forms compute one function."""

import pytest
import torch

from synclearn.model import ConfigError, MCSDConfig, build_model, load_model, named_config, save_model
from synclearn.model.naive import naive_mixer


def tiny(dtype=torch.float64, **overrides):
    cfg = MCSDConfig(**{**dict(d_model=32, n_layers=2, n_channels=4, d_ff=64, chunk_size=16, predictor_rank=8), **overrides})
    model = build_model(cfg, seed=1, dtype=dtype)
    if cfg.gated_decay:  # a trained gate: dt far from 1, some tokens at the decay floor
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for block in model.blocks:
                gate = block.mixer.gate
                gate.weight.copy_(torch.randn(gate.weight.shape, generator=g, dtype=dtype) * 0.6)
                gate.bias.copy_(torch.randn(gate.bias.shape, generator=g, dtype=dtype))
    return model


def mixer_inputs(model, T, B=2, with_state=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    C, Dc = model.config.n_channels, model.config.d_channel
    x = torch.randn(B, T, model.config.d_model, generator=g, dtype=torch.float64)
    if with_state:
        s = torch.randn(B, C, Dc, generator=g, dtype=torch.float64)
        d = torch.randn(B, C, Dc, generator=g, dtype=torch.float64)
        pos = 5
    else:
        s = d = None
        pos = 0
    return x, s, d, pos


@pytest.mark.parametrize("T", [1, 63, 100])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("gated", [False, True])
def test_mixer_chunked_and_recurrent_match_naive(T, with_state, gated):
    model = tiny(gated_decay=gated)
    mixer = model.blocks[0].mixer
    x, s, d, pos = mixer_inputs(model, T, with_state=with_state)
    x.requires_grad_(True)
    posv = torch.full((2,), pos, dtype=torch.long)
    w = torch.randn(2, T, model.config.d_model, dtype=torch.float64)

    ref = naive_mixer(mixer, x, s, d, pos)
    g_ref = torch.autograd.grad((ref * w).sum(), [x, *mixer.parameters()], allow_unused=True, materialize_grads=True)

    chunk, _, _ = mixer(x, s, d, posv)
    g_chunk = torch.autograd.grad((chunk * w).sum(), [x, *mixer.parameters()], allow_unused=True, materialize_grads=True)

    zeros = torch.zeros(2, mixer.n_channels, mixer.d_channel, dtype=torch.float64)
    ss, dd, outs = (s if s is not None else zeros), (d if d is not None else zeros), []
    for t in range(T):
        y, ss, dd = mixer.step(x[:, t], ss, dd, posv + t)
        outs.append(y)
    rec = torch.stack(outs, 1)
    g_rec = torch.autograd.grad((rec * w).sum(), [x, *mixer.parameters()], allow_unused=True, materialize_grads=True)

    torch.testing.assert_close(chunk, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(rec, ref, rtol=1e-9, atol=1e-9)
    for a, b, c in zip(g_ref, g_chunk, g_rec):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(c, a, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("gated", [False, True])
def test_mixer_final_states_chunked_equal_recurrent(gated):
    model = tiny(gated_decay=gated)
    mixer = model.blocks[1].mixer
    x, s, d, pos = mixer_inputs(model, 63)
    posv = torch.full((2,), pos, dtype=torch.long)
    _, s_chunk, d_chunk = mixer(x, s, d, posv)
    ss, dd = s, d
    for t in range(63):
        _, ss, dd = mixer.step(x[:, t], ss, dd, posv + t)
    torch.testing.assert_close(s_chunk, ss, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(d_chunk, dd, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
@pytest.mark.parametrize("T", [1, 63, 100])
@pytest.mark.parametrize("gated", [False, True])
def test_full_forward_equals_prefill_plus_steps(dtype, tol, T, gated):
    model = tiny(dtype, gated_decay=gated)
    ids = torch.randint(0, 263, (2, T), generator=torch.Generator().manual_seed(T))
    full = model(ids)
    k = T // 3
    if k:
        logits, state = model.prefill(ids[:, :k])
        torch.testing.assert_close(logits, full[:, :k], rtol=tol, atol=tol)
    else:
        state = model.init_state(2)
    for t in range(k, T):
        logits_t, state = model.step(ids[:, t], state)
        torch.testing.assert_close(logits_t, full[:, t], rtol=tol, atol=tol)
    _, one_pass = model.prefill(ids)
    torch.testing.assert_close(state.slope, one_pass.slope, rtol=tol, atol=tol)
    torch.testing.assert_close(state.decay, one_pass.decay, rtol=tol, atol=tol)
    assert torch.equal(state.pos, one_pass.pos)


@pytest.mark.parametrize("gated", [False, True])
def test_prefill_two_halves_with_state_equals_one_pass(gated):
    model = tiny(gated_decay=gated)
    ids = torch.randint(0, 263, (3, 101))
    full, state_full = model.prefill(ids)
    a, st = model.prefill(ids[:, :50])
    b, st = model.prefill(ids[:, 50:], st)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(st.slope, state_full.slope, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(st.decay, state_full.decay, rtol=1e-10, atol=1e-10)


def test_state_size_is_constant_in_context():
    model = tiny(torch.float32)
    _, s_short = model.prefill(torch.randint(0, 256, (1, 10)))
    _, s_long = model.prefill(torch.randint(0, 256, (1, 1000)))
    assert s_short.nbytes() == s_long.nbytes()
    cfg = model.config
    assert s_long.slope.shape == (cfg.n_layers, 1, cfg.n_channels, cfg.d_channel)


@pytest.mark.parametrize("gated", [False, True])
def test_gradients_flow_to_every_trained_parameter(gated):
    model = tiny(torch.float32, gated_decay=gated).train()
    ids = torch.randint(0, 256, (2, 40))
    logits = model(ids[:, :-1])
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
    for name, p in model.named_parameters():
        if ".predictor." not in name:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_ids_are_clear_errors():
    model = tiny(torch.float32)
    with pytest.raises(ValueError, match=r"\[0, 264\)"):
        model(torch.tensor([[1, 2, 999]]))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="batch"):
        model.step(torch.tensor([1, 2]), model.init_state(3))


def test_config_error_lists_every_bad_field():
    with pytest.raises(ConfigError) as err:
        MCSDConfig(d_model=30, n_channels=4, n_layers=0, norm_eps=-1, vocab_size=100)
    msg = str(err.value)
    for field in ("n_layers=0", "norm_eps=-1", "vocab_size=100", "not divisible"):
        assert field in msg
    with pytest.raises(ConfigError, match="unknown model name"):
        named_config("mcsd-huge")
    with pytest.raises(ConfigError, match="unknown MCSDConfig fields"):
        MCSDConfig.from_dict({"d_model": 64, "heads": 3})
    with pytest.raises(ConfigError, match="gated_decay='yes'"):
        MCSDConfig(gated_decay="yes")


def test_gated_decay_starts_as_the_fixed_mixer_and_counts_its_gate():
    plain = tiny()
    gated = build_model(MCSDConfig(**{**plain.config.to_dict(), "gated_decay": True}), seed=1, dtype=torch.float64)
    assert gated.num_parameters() == gated.config.num_parameters() > plain.num_parameters()
    gated.load_state_dict(plain.state_dict(), strict=False)  # every shared weight equal, the gate at dt = 1
    ids = torch.randint(0, 263, (2, 40), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gated(ids), plain(ids), rtol=1e-10, atol=1e-10)


def test_named_sizes_have_the_promised_parameter_counts():
    small = named_config("mcsd-small").num_parameters()
    assert 25e6 <= small <= 60e6
    assert 0.9e9 <= named_config("mcsd-1b").num_parameters() <= 1.15e9
    assert 1.5e9 <= named_config("mcsd-1.6b").num_parameters() <= 1.7e9
    assert 2.8e9 <= named_config("mcsd-3b").num_parameters() <= 3.2e9
    assert named_config("mcsd-1.6b").d_model == 2560 and named_config("mcsd-3b").n_layers == 20
    tiny_model = load_model("mcsd-tiny")
    assert tiny_model.num_parameters() == tiny_model.config.num_parameters()


def test_checkpoint_round_trip(tmp_path):
    model = tiny(torch.float32)
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config == model.config
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert loaded.lm_head.weight.data_ptr() == loaded.embed.weight.data_ptr()  # still tied
    assert not list(tmp_path.glob("ckpt/.*"))  # no temp files left behind


def test_load_model_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="mcsd-tiny"):
        load_model(tmp_path / "nothing-here")


def test_named_models_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = load_model("mcsd-tiny", seed=7)
    after = torch.rand(1)
    b = load_model("mcsd-tiny", seed=7)
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_inference_steps_write_buffers_and_leave_the_given_state_alone(dtype, tol):
    """The no-autograd step (preallocated buffers, Z_n carried in the state) equals the chunked
    form, and the state passed in is a value: never modified."""
    model = tiny(dtype)
    ids = torch.randint(0, 263, (2, 70), generator=torch.Generator().manual_seed(3))
    full, one_pass = model.prefill(ids)
    with torch.inference_mode():
        _, state = model.prefill(ids[:, :5])
        for t in range(5, 70):
            before = state.clone()
            logits_t, new = model.step(ids[:, t], state)
            for a, b in zip((before.slope, before.decay, before.pos, before.z), (state.slope, state.decay, state.pos, state.z)):
                assert torch.equal(a, b)
            torch.testing.assert_close(logits_t, full[:, t].detach(), rtol=tol, atol=tol)
            state = new
    torch.testing.assert_close(state.slope, one_pass.slope.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(state.decay, one_pass.decay.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(state.z, one_pass.z, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)


def test_state_without_z_is_completed_from_pos():
    model = tiny()
    ids = torch.randint(0, 263, (1, 20))
    _, state = model.prefill(ids[:, :10])
    legacy = type(state)(state.slope, state.decay, state.pos)  # a state built before z existed
    with torch.no_grad():
        a, _ = model.step(ids[:, 10], state)
        b, _ = model.step(ids[:, 10], legacy)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
