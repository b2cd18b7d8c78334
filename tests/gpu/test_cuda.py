"""CUDA paths, proven against references: the MCSD forms, the learner's three update families,
serving with an attached learner (its own stream), Fabric pretraining and the HF adapter.

Every test is marked ``gpu`` (deselected by the default addopts) and skipped without CUDA:

    python -m pytest -q -m gpu tests/gpu -p no:cacheprovider

References are CPU float64 runs of the same weights; CUDA float64 must match them to ~1e-9,
CUDA float32 (TF32 off) to ~1e-4, bf16 within a bounded relative error. For a dry run of the
test code on a machine without a GPU, ``SYNCLEARN_GPU_TEST_DEVICE=cpu`` runs the same tests
with "cpu" as the device under test (the stream checks are then skipped).
"""

from __future__ import annotations

import copy
import os
import threading

import pytest
import torch

from synclearn.data import chat_pairs
from synclearn.model import MCSDConfig, SparseSpec, build_model
from tests.learn.conftest import snapshot

DEVICE = os.environ.get("SYNCLEARN_GPU_TEST_DEVICE", "cuda")
ON_CUDA = DEVICE.startswith("cuda")
TIMEOUT = 120

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CFG = {"d_model": 64, "n_layers": 3, "n_channels": 4, "d_ff": 256, "predictor_rank": 8, "chunk_size": 16}


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 matmuls in full precision (no TF32), so CUDA fp32 is comparable with CPU fp32."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    if ON_CUDA:
        torch.cuda.synchronize()  # an asynchronous CUDA error surfaces in the test that caused it


def mcsd(dtype=torch.float64, device="cpu", seed=1, **overrides):
    return build_model(MCSDConfig(**{**CFG, **overrides}), seed=seed, dtype=dtype, device=device)


def assert_close_cpu(got, ref, tol, msg=""):
    got, ref = got.detach().cpu().to(ref.dtype), ref.detach()
    worst = float((got - ref).abs().max()) if got.shape == ref.shape and got.numel() else float("nan")
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol,
                               msg=lambda default: f"{msg}: max |diff| {worst:.3e}\n{default}")


def rel_err(got, ref):
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return float((got - ref).norm() / ref.norm().clamp(min=1e-30))


# -- (a) the MCSD model: chunked scan vs naive reference vs recurrent steps ------------------------


@pytest.mark.parametrize("T", [1, 63, 100])
@pytest.mark.parametrize("with_state", [False, True])
def test_mixer_forms_on_device_match_the_naive_reference(T, with_state):
    """Chunked and recurrent mixer forms on the device (fp64) equal the O(T^2) naive form on CPU,
    outputs and gradients (input and every mixer weight)."""
    from synclearn.model.naive import naive_mixer

    cpu = mcsd()
    mixer_cpu = cpu.blocks[0].mixer
    mixer = copy.deepcopy(mixer_cpu).to(DEVICE)
    g = torch.Generator().manual_seed(T)
    B, C, Dc, D = 2, mixer.n_channels, mixer.d_channel, cpu.config.d_model
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    s = torch.randn(B, C, Dc, generator=g, dtype=torch.float64) if with_state else None
    d = torch.randn(B, C, Dc, generator=g, dtype=torch.float64) if with_state else None
    pos = 5 if with_state else 0
    w = torch.randn(B, T, D, generator=g, dtype=torch.float64)

    x_ref = x.clone().requires_grad_(True)
    ref = naive_mixer(mixer_cpu, x_ref, s, d, pos)  # the reference stays on CPU (its constants live there)
    g_ref = torch.autograd.grad((ref * w).sum(), [x_ref, *mixer_cpu.parameters()])

    xd, wd = x.to(DEVICE).requires_grad_(True), w.to(DEVICE)
    sd = s.to(DEVICE) if s is not None else None
    dd = d.to(DEVICE) if d is not None else None
    posv = torch.full((B,), pos, dtype=torch.long, device=DEVICE)
    chunk, s_chunk, d_chunk = mixer(xd, sd, dd, posv)
    g_chunk = torch.autograd.grad((chunk * wd).sum(), [xd, *mixer.parameters()])

    zeros = torch.zeros(B, C, Dc, dtype=torch.float64, device=DEVICE)
    ss, ds, outs = (sd if sd is not None else zeros), (dd if dd is not None else zeros), []
    for t in range(T):
        y, ss, ds = mixer.step(xd[:, t], ss, ds, posv + t)
        outs.append(y)
    rec = torch.stack(outs, 1)
    g_rec = torch.autograd.grad((rec * wd).sum(), [xd, *mixer.parameters()])

    assert chunk.device.type == torch.device(DEVICE).type
    assert_close_cpu(chunk, ref, 1e-9, "chunked output")
    assert_close_cpu(rec, ref, 1e-9, "recurrent output")
    assert_close_cpu(s_chunk, ss.cpu(), 1e-10, "slope state chunked vs recurrent")
    assert_close_cpu(d_chunk, ds.cpu(), 1e-10, "decay state chunked vs recurrent")
    for i, (a, b, c) in enumerate(zip(g_ref, g_chunk, g_rec)):
        assert_close_cpu(b, a, 1e-9, f"chunked grad {i}")
        assert_close_cpu(c, a, 1e-9, f"recurrent grad {i}")


def test_long_chunked_scan_on_device_matches_recurrent_reference():
    """5000 tokens, slowest decay 1 - 2^-14 (the mixer's constants): fp32 device chunked scan vs a
    fp64 CPU recurrence; no overflow, final state too."""
    from synclearn.model.scan import chunk_decay_scan, recurrent_decay_step

    C = 4
    la = torch.log(1.0 - torch.pow(2.0, -5.0 - torch.arange(C, dtype=torch.float64) * 3))  # down to 1 - 2^-14
    x = torch.randn(1, 5000, C, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    state = torch.zeros(1, C, 8, dtype=torch.float64)
    ys = []
    for t in range(x.shape[1]):
        y, state = recurrent_decay_step(x[:, t], la, state)
        ys.append(y)
    ref = torch.stack(ys, 1)
    y, final = chunk_decay_scan(x.float().to(DEVICE), la.float().to(DEVICE), None, 64)
    assert torch.isfinite(y).all() and torch.isfinite(final).all()
    scale = ref.abs().max()
    assert float((y.double().cpu() - ref).abs().max() / scale) < 1e-4
    assert float((final.double().cpu() - state).abs().max() / scale) < 1e-4


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_model_on_device_matches_cpu_outputs_states_gradients(dtype, tol):
    """Same weights on CPU and on the device: chunked logits, prefill state, prefill+steps,
    and every parameter's gradient agree; on the device, recurrent steps equal the chunked form."""
    cpu = mcsd(dtype)
    dev = copy.deepcopy(cpu).to(DEVICE)
    ids = torch.randint(0, 263, (2, 100), generator=torch.Generator().manual_seed(3))
    idd = ids.to(DEVICE)

    full_c, st_c = cpu.prefill(ids)
    full_d, st_d = dev.prefill(idd)
    assert_close_cpu(full_d, full_c, tol, "chunked logits")
    assert_close_cpu(st_d.slope, st_c.slope, tol, "slope state")
    assert_close_cpu(st_d.decay, st_c.decay, tol, "decay state")
    assert torch.equal(st_d.pos.cpu(), st_c.pos)

    k = 37  # prefill a prefix (not a chunk multiple), then decode the rest one token at a time
    logits, state = dev.prefill(idd[:, :k])
    assert_close_cpu(logits, full_c[:, :k], tol, "prefix logits")
    for t in range(k, 100):
        step_logits, state = dev.step(idd[:, t], state)
        assert_close_cpu(step_logits, full_c[:, t], tol, f"step {t}")
    assert_close_cpu(state.slope, st_c.slope, tol, "state after steps")
    assert_close_cpu(state.decay, st_c.decay, tol, "state after steps")
    assert torch.equal(state.pos.cpu(), st_c.pos)

    grads = []
    for model, x in ((cpu, ids), (dev, idd)):
        model.train()
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        params = [p for n, p in model.named_parameters() if ".predictor." not in n]
        grads.append(torch.autograd.grad(loss, params))
        model.eval()
    names = [n for n, _ in cpu.named_parameters() if ".predictor." not in n]
    for name, gc, gd in zip(names, *grads):
        assert torch.isfinite(gd).all(), name
        assert_close_cpu(gd, gc, tol * 10, f"grad {name}")


def test_bf16_model_on_device_has_bounded_error():
    """bf16 weights on the device vs the fp32 model: chunked logits, 64 decode steps and the
    state stay finite and within a few percent (relative L2)."""
    ref = mcsd(torch.float32, device=DEVICE)
    bf = copy.deepcopy(ref).to(torch.bfloat16)
    ids = torch.randint(0, 263, (2, 200), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    full_r, st_r = ref.prefill(ids)
    full_b, st_b = bf.prefill(ids)
    assert full_b.dtype == torch.bfloat16 and st_b.slope.dtype == torch.bfloat16
    assert torch.isfinite(full_b).all() and torch.isfinite(st_b.slope).all() and torch.isfinite(st_b.decay).all()
    errors = {"logits": rel_err(full_b, full_r), "slope": rel_err(st_b.slope, st_r.slope),
              "decay": rel_err(st_b.decay, st_r.decay)}
    _, s_r = ref.prefill(ids[:, :136])
    _, s_b = bf.prefill(ids[:, :136])
    worst = 0.0
    for t in range(136, 200):
        lr_, s_r = ref.step(ids[:, t], s_r)
        lb, s_b = bf.step(ids[:, t], s_b)
        assert torch.isfinite(lb).all()
        worst = max(worst, rel_err(lb, lr_))
    errors["steps"] = worst
    print("bf16 relative errors:", errors)
    assert all(e < 0.05 for e in errors.values()), errors


def test_sparse_inference_on_device_matches_cpu():
    """Sparse MLP inference (top-k and predictor) on the device equals the CPU result, and
    k = d_ff equals the dense path."""
    cpu = mcsd()
    dev = copy.deepcopy(cpu).to(DEVICE)
    ids = torch.randint(0, 263, (2, 40), generator=torch.Generator().manual_seed(5))
    for spec in (SparseSpec(64, "topk"), SparseSpec(64, "predictor")):
        assert_close_cpu(dev(ids.to(DEVICE), sparse=spec), cpu(ids, sparse=spec), 1e-9, str(spec))
        state_c, state_d = cpu.init_state(2), dev.init_state(2)
        for t in range(5):
            lc, state_c = cpu.step(ids[:, t], state_c, sparse=spec)
            ld, state_d = dev.step(ids[:, t].to(DEVICE), state_d, sparse=spec)
            assert_close_cpu(ld, lc, 1e-9, f"{spec} step {t}")
    full = SparseSpec(CFG["d_ff"], "topk")
    assert_close_cpu(dev(ids.to(DEVICE), sparse=full), cpu(ids), 1e-9, "k = d_ff is dense")


# -- (b) the learner: sparse / lora / full steps on the device ---------------------------------------


def variants(examples, i):
    return [{"prompt": e["prompt"] + " " * i, "response": e["response"] + "!" * i} for e in examples]


def copy_trainable(src_learner, dst_learner):
    """Make the device learner start from exactly the CPU learner's weights (LoRA init included)."""
    src = dict(src_learner.model.named_parameters())
    with torch.no_grad():
        for name, p in dst_learner.model.named_parameters():
            p.copy_(src[name].to(p.device, p.dtype))


@pytest.mark.parametrize("update", ["sparse", "lora", "full"])
def test_learner_step_on_device_matches_cpu(update, examples):
    """Four fp64 steps with the same seed and examples: the device run selects the same neurons
    (sparse), reports the same losses and ends with the same weights as the CPU run."""
    from synclearn.learn import Learner

    cpu_l, dev_l = (Learner(mcsd(torch.float64, device=device), update=update, seed=7, neuron_fraction=0.1,
                            exploration=0.0, lora_rank=4) for device in ("cpu", DEVICE))
    copy_trainable(cpu_l, dev_l)  # the same start, LoRA's random init included
    cpu_r, dev_r = ([learner.step(variants(examples, i)) for i in range(4)] for learner in (cpu_l, dev_l))
    assert dev_l.model.device.type == torch.device(DEVICE).type
    for rc, rd in zip(cpu_r, dev_r):
        assert not rd.skipped, rd.reason
        assert rd.version == rc.version
        assert rd.neurons == rc.neurons, "the device selected different neurons"
        assert abs(rd.loss - rc.loss) < 1e-8 * max(1.0, abs(rc.loss)), (rd.loss, rc.loss)
    wc, wd = snapshot(cpu_l.model), snapshot(dev_l.model)
    assert wc.keys() == wd.keys()
    for name in wc:
        assert_close_cpu(wd[name], wc[name], 1e-8, name)
    if update == "sparse":
        sc, sd = cpu_l.optimizer.state_dict()["layers"], dev_l.optimizer.state_dict()["layers"]
        assert sc.keys() == sd.keys()
        for layer in sc:
            assert torch.equal(sc[layer]["neurons"], sd[layer]["neurons"].cpu())
            for key in ("m", "v"):
                assert_close_cpu(sd[layer][key], sc[layer][key], 1e-8, f"optimizer {key} layer {layer}")
            assert torch.equal(sd[layer]["t"].cpu(), sc[layer]["t"])
            assert sd[layer]["m"].device.type == torch.device(DEVICE).type  # moments live on the device


def test_sparse_step_on_device_changes_only_the_selected_neurons(examples):
    """fp32 on the device: one sparse step; every element outside the selected rows/columns is
    bitwise unchanged, and the selected ones did change."""
    from synclearn.learn import Learner

    model = mcsd(torch.float32, device=DEVICE)
    learner = Learner(model, update="sparse", neuron_fraction=0.1, plastic_layers=2)
    before = snapshot(model)
    result = learner.step(examples)
    assert not result.skipped and result.version == 1 and set(result.touched) <= {1, 2}
    changed = False
    for name, p in model.named_parameters():
        old = before[name]
        if ".mlp.up." in name or ".mlp.down." in name:
            layer = int(name.split(".")[1])
            idx = torch.tensor(result.neurons.get(layer, []), dtype=torch.long, device=p.device)
            rows = ".up." in name
            keep = torch.ones(old.shape[0] if rows else old.shape[1], dtype=torch.bool, device=p.device)
            keep[idx] = False
            if rows:
                assert torch.equal(p[keep], old[keep]), name
                changed |= not torch.equal(p[idx], old[idx])
            else:
                assert torch.equal(p[:, keep], old[:, keep]), name
                changed |= not torch.equal(p[:, idx], old[:, idx])
        else:
            assert torch.equal(p, old), f"{name} changed but is not a plastic MLP weight"
    assert changed


@pytest.mark.parametrize("update", ["sparse", "lora", "full"])
def test_bf16_learning_on_device_lowers_the_loss(update, examples):
    """bf16 weights on the device: every step commits with a finite loss, and the loss falls."""
    from synclearn.learn import Learner
    from synclearn.model import load_model

    model = load_model("mcsd-tiny", dtype=torch.bfloat16, device=DEVICE)
    learner = Learner(model, update=update, neuron_fraction=0.2)
    results = [learner.step(examples) for _ in range(25)]
    losses = [r.loss for r in results]
    assert not any(r.skipped for r in results), [r.reason for r in results if r.skipped]
    assert all(torch.isfinite(torch.tensor(loss)) for loss in losses), losses
    assert model.dtype == torch.bfloat16 and all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < losses[0] - 0.2, losses


# -- (c) serving on the device with the learner attached ----------------------------------------------


def fill(log, n, seed=0):
    for pair in chat_pairs(n, seed):
        log.append(session_id="teacher", **pair)


def plastic_checksum(model):
    # computed on the serving thread's stream; float() waits for it
    return float(sum(w.double().sum() for mlp in model.mlps for w in (mlp.up.weight, mlp.down.weight)))


def serving_model():
    # big enough that a decode step and a commit take real kernel time on the device
    return mcsd(torch.float32, device=DEVICE, d_model=256, n_layers=4, d_ff=1024, predictor_rank=16, chunk_size=32)


def test_no_decode_step_sees_a_half_written_update_on_device(tmp_path):
    """The CPU torn-read test on the device: the learner commits in a tight loop on its own
    stream while the session decodes. Every decode step sees one weight version: the version
    and the plastic weights' checksum are the same before and after it, the step recomputed
    under the same read lock gives the same logits, and one version always has one checksum."""
    from synclearn.chat import ChatSession
    from synclearn.learn import Learner
    from synclearn.memory import InteractionLog

    model = serving_model()
    with InteractionLog(tmp_path / "train.db") as train, InteractionLog(tmp_path / "served.db") as served:
        fill(train, 16)
        learner = Learner(model, train, neuron_fraction=0.2)
        session = ChatSession(model, served, max_new_tokens=40, temperature=1.0, seed=0)
        guard, records, mismatches, streams = learner.guard, [], [], set()
        original_step, original_learn = model.step, learner.step

        def instrumented_step(ids_t, state, **kw):  # called by the session under the read lock
            v0, c0 = guard.version, plastic_checksum(model)
            out = original_step(ids_t, state, **kw)
            again = original_step(ids_t, state, **kw)  # same inputs, same read lock: same weights
            if not torch.allclose(out[0], again[0], rtol=1e-5, atol=1e-5):
                mismatches.append((v0, float((out[0] - again[0]).abs().max())))
            records.append((v0, guard.version, c0, plastic_checksum(model)))
            return out

        def instrumented_learn(examples):  # runs on the learner thread
            if ON_CUDA:
                streams.add(torch.cuda.current_stream().cuda_stream)
            return original_learn(examples)

        model.step, learner.step = instrumented_step, instrumented_learn
        handle = learner.attach(session, log=train, idle_only=False, idle_replay=True, poll_s=0.01)
        replies = []
        try:
            assert handle.wait_for_steps(1, TIMEOUT)
            while len({r[0] for r in records}) < 4 and handle.attached and len(replies) < 200:
                replies.append(session.send("tell me something"))
        finally:
            status = handle.detach(TIMEOUT)
        if ON_CUDA:
            torch.cuda.synchronize()
        assert status["steps"] >= 2 and not status["errors"], status
        assert status["stopped_reason"] == "detached" and not status["attached"]
        assert status["version"] == guard.version
        assert len({r[0] for r in records}) >= 4, "serving did not overlap several commits"
        for v0, v1, c0, c1 in records:
            assert v0 == v1 and c0 == c1, (v0, v1, c0, c1)  # one version, untouched weights, whole step
        assert not mismatches, mismatches[:5]
        by_version: dict[int, set[float]] = {}
        for v0, _, c0, _ in records:
            by_version.setdefault(v0, set()).add(c0)
        assert all(len(c) == 1 for c in by_version.values()), by_version  # a version is one set of weights
        for r in replies:  # well-formed replies, logged, versions in order
            assert isinstance(r.text, str) and "\x00" not in r.text and r.interaction_id is not None
            assert 0 < r.completion_tokens <= 40 and r.versions[0] <= r.versions[1]
        firsts = [r.versions[0] for r in replies]
        assert firsts == sorted(firsts)
        if ON_CUDA:
            default = torch.cuda.default_stream().cuda_stream
            assert streams and default not in streams, "the learner did not run on its own CUDA stream"
        model.step, learner.step = original_step, original_learn
        assert session.send("still there?").completion_tokens > 0  # serving works after detach


def test_attach_detach_repeatedly_while_serving_on_device(tmp_path):
    """A serving thread keeps answering while a learner is attached and detached four times
    (the governor path: idle_only, yielding at layer boundaries)."""
    from synclearn.chat import ChatSession
    from synclearn.learn import Learner
    from synclearn.memory import InteractionLog

    model = serving_model()
    with InteractionLog(tmp_path / "log.db") as log:
        fill(log, 8)
        session = ChatSession(model, log, max_new_tokens=8)
        learner = Learner(model, neuron_fraction=0.1)
        stop, errors, replies = threading.Event(), [], []

        def serve():
            try:
                while not stop.is_set():
                    replies.append(session.send("keep talking"))
            except Exception as err:  # noqa: BLE001 -- surfaced by the assertion below
                errors.append(err)

        server = threading.Thread(target=serve)
        server.start()
        try:
            for _ in range(4):
                handle = learner.attach(session, max_defer_s=0.05, poll_s=0.01)
                assert handle.wait_for_steps(1, TIMEOUT)
                status = handle.detach(TIMEOUT)
                assert status["attached"] is False and not status["errors"], status
        finally:
            stop.set()
            server.join(TIMEOUT)
        assert not server.is_alive() and not errors and replies, errors
        assert learner.guard.version >= 4
        firsts = [r.versions[0] for r in replies]
        assert firsts == sorted(firsts)
        assert all(torch.isfinite(p).all() for p in model.parameters())


# -- (d) Fabric pretraining on the device ------------------------------------------------------------


def test_fabric_pretraining_bf16_mixed_on_device_then_loads_back(tmp_path):
    """A tiny chat base trained with Fabric (accelerator=cuda, precision=bf16-mixed): finite,
    falling loss; the cached checkpoint loads back (plain and Fabric weights equal), a second
    call reuses it, and the loaded model decodes on the device."""
    from synclearn.learn import pretrain as P
    from synclearn.model import load_model

    shape = {"d_model": 64, "n_layers": 2, "n_channels": 4, "d_ff": 256, "predictor_rank": 0, "chunk_size": 32}
    settings = {"overrides": shape, "steps": 30, "batch_size": 8, "seq_len": 64, "lr": 1e-2, "progress": False,
                "accelerator": "cuda" if ON_CUDA else "cpu", "precision": "bf16-mixed"}
    model = P.pretrained_model("mcsd-chat", cache_dir=str(tmp_path), **settings)
    info = model.pretrain_info
    assert info["trained_now"] and len(info["losses"]) == 30
    assert all(torch.isfinite(torch.tensor(info["losses"])))
    assert info["last_loss"] < info["first_loss"], (info["first_loss"], info["last_loss"])
    again = P.pretrained_model("mcsd-chat", cache_dir=str(tmp_path), **settings)
    assert not again.pretrain_info["trained_now"]
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
    path = info["path"]
    fabric_state = torch.load(os.path.join(path, "fabric.ckpt"), map_location="cpu", weights_only=True)["model"]
    plain = load_model(path)
    for name, p in plain.state_dict().items():
        assert torch.equal(p, fabric_state[name].to(p.dtype)), name
    dev = load_model(path, device=DEVICE)
    gen = dev.generate("What is Ada's pet?", chat=True, max_new_tokens=8)
    assert isinstance(gen.text, str) and len(gen.ids) <= 8


# -- (e) the HF Llama adapter on the device -------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    cfg = LlamaConfig(vocab_size=264, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def test_hf_llama_on_device_decodes_with_its_kv_cache(llama_dir):
    from synclearn.chat import ChatSession
    from synclearn.model import load_model

    model = load_model(llama_dir, device=DEVICE)
    assert model.device.type == torch.device(DEVICE).type
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    full = model(ids)
    _, state = model.prefill(ids[:, :7])
    for t in range(7, 12):
        step_logits, state = model.step(ids[:, t], state)
        torch.testing.assert_close(step_logits, full[:, t], rtol=1e-4, atol=1e-4)
    assert state.pos.tolist() == [12, 12]
    reply = ChatSession(model, max_new_tokens=6).send("hi")
    assert isinstance(reply.text, str) and reply.completion_tokens <= 6


def test_hf_llama_sparse_learning_on_device_matches_cpu(llama_dir, examples):
    """fp64 sparse learning on the Llama MLP: the device run picks the same neurons and ends with
    the same weights as the CPU run; only the plastic layer's MLP changed; the loss falls."""
    from synclearn.learn import Learner
    from synclearn.model import load_model

    runs = []
    for device in ("cpu", DEVICE):
        model = load_model(llama_dir, dtype=torch.float64, device=device)
        learner = Learner(model, update="sparse", neuron_fraction=0.1, plastic_layers=1, exploration=0.0)
        before = snapshot(model)
        results = [learner.step(examples) for _ in range(12)]
        runs.append((model, before, results))
    (cpu_m, _, cpu_r), (dev_m, dev_before, dev_r) = runs
    assert all(not r.skipped for r in dev_r), [r.reason for r in dev_r]
    assert [r.neurons for r in dev_r] == [r.neurons for r in cpu_r]
    assert dev_r[-1].loss < dev_r[0].loss
    for rc, rd in zip(cpu_r, dev_r):
        assert abs(rd.loss - rc.loss) < 1e-8 * max(1.0, abs(rc.loss))
    wc, wd = snapshot(cpu_m), snapshot(dev_m)
    for name in wc:
        # transformers computes the rotary embedding in float32 whatever the model's dtype, so the
        # two devices differ at float32 rounding inside an otherwise float64 model
        assert_close_cpu(wd[name], wc[name], 1e-6, name)
        if "layers.1.mlp" not in name:
            assert torch.equal(wd[name], dev_before[name]), name


def test_hf_llama_bf16_sparse_learning_on_device(llama_dir, examples):
    from synclearn.learn import Learner
    from synclearn.model import load_model

    model = load_model(llama_dir, dtype=torch.bfloat16, device=DEVICE)
    learner = Learner(model, update="sparse", neuron_fraction=0.2, plastic_layers=2)
    results = [learner.step(examples) for _ in range(15)]
    assert not any(r.skipped for r in results), [r.reason for r in results if r.skipped]
    losses = [r.loss for r in results]
    assert all(torch.isfinite(torch.tensor(loss)) for loss in losses) and losses[-1] < losses[0], losses
