"""In-place learning on a local Hugging Face Llama (tiny, random, nothing downloaded)."""

import torch

from synclearn.learn import Learner
from synclearn.model import load_model

from .conftest import snapshot
from transformers import LlamaConfig, LlamaForCausalLM


def test_hf_model_decodes_with_its_kv_cache(llama_dir):
    model = load_model(llama_dir)
    ids = torch.randint(0, 256, (2, 12))
    full = model(ids)
    logits, state = model.prefill(ids[:, :7])
    for t in range(7, 12):
        step_logits, state = model.step(ids[:, t], state)
        torch.testing.assert_close(step_logits, full[:, t], rtol=1e-4, atol=1e-4)
    assert state.nbytes() > 0 and state.pos.tolist() == [12, 12]
    assert len(model.generate("hi", max_new_tokens=4).ids) <= 4


def test_sparse_learning_in_place_on_llama_mlp(llama_dir, examples):
    model = load_model(llama_dir)
    learner = Learner(model, update="sparse", neuron_fraction=0.1, plastic_layers=1)
    before = snapshot(model)
    losses = [learner.step(examples).loss for _ in range(12)]
    assert losses[-1] < losses[0]
    touched = set()
    r = learner.step(examples)
    touched = set(r.neurons[1])
    after = snapshot(model)
    for name in before:
        if "layers.1.mlp" in name:
            continue
        assert torch.equal(before[name], after[name]), name
    mlp = model.mlps[1]
    assert len(touched) <= learner.budget[1]
    # neuron i = row i of gate and up, column i of down: the layout the learner wrote through
    layout = model.neuron_layouts()[1]
    assert layout.in_weights[0] is mlp.gate_proj.weight and layout.out_weight is mlp.down_proj.weight


def test_lora_on_hf_model(llama_dir, examples):
    model = load_model(llama_dir)
    learner = Learner(model, update="lora", lora_rank=4)
    base = {n: p.clone() for n, p in model.named_parameters() if "lora_" not in n}
    losses = [learner.step(examples).loss for _ in range(10)]
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n


# -- bring your own model: the loop on a HF model with its own BPE tokenizer and chat template --------
import io  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from synclearn.chat.runtime import Runtime  # noqa: E402

from ..model.hf_fixtures import bpe_tokenizer_dir, build_family  # noqa: E402,F401


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory, bpe_tokenizer_dir):  # noqa: F811
    return build_family("qwen2", tmp_path_factory.mktemp("tiny-qwen2"), bpe_tokenizer_dir)


def test_a_folder_without_a_fitting_tokenizer_is_refused_at_load(tmp_path, bpe_tokenizer_dir):  # noqa: F811
    small = tmp_path / "small-vocab"
    cfg = LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(small)
    with pytest.raises(ValueError, match=r"no tokenizer and a vocabulary of 200 ids.*263"):
        load_model(small)
    PreTrainedTokenizerFast.from_pretrained(bpe_tokenizer_dir).save_pretrained(small)  # 320 ids > 200
    with pytest.raises(ValueError, match=r"tokenizer has 320 ids but .* only 200"):
        load_model(small)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hf_model_chats_and_learns_in_its_dtype(qwen_dir, examples, dtype):
    model = load_model(qwen_dir, dtype=dtype)
    assert model.dtype == dtype
    from synclearn.chat import ChatSession

    chat = ChatSession(model, max_new_tokens=4)
    chat.send("hello")
    chat.send("again")
    before = snapshot(model)
    learner = Learner(model, update="sparse", neuron_fraction=0.1, plastic_layers=2, seed=0)
    result = learner.step(examples)
    after = snapshot(model)
    assert not result.skipped and all(p.dtype == dtype for p in after.values())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(".mlp." in n for n in changed)


def test_runtime_on_a_hf_folder_learns_forgets_checkpoints_and_restores(qwen_dir, tmp_path, examples):
    data = tmp_path / "data"
    rt = Runtime.open(qwen_dir, data, checkpoint_every_s=0, learner={"update": "sparse", "neuron_fraction": 0.1})
    try:
        chat = rt.new_session()
        first = chat.send("What is Kado's pet?", max_new_tokens=4)
        chat.send("Thanks!", max_new_tokens=4)
        rows = rt.log.by_session(chat.session_id)
        learned = [{"id": r["id"], "prompt": r["prompt"], "response": "It is a parrot."} for r in rows]
        before_learning = snapshot(rt.model)
        rt.learner.step(learned[:1])
        rt.learner.step(learned)
        assert any(not torch.equal(before_learning[n], p) for n, p in snapshot(rt.model).items())
        report = rt.forget(chat.session_id, ids=[first.interaction_id])
        assert report["mode"] == "exact"
        rt.save()
        saved = snapshot(rt.model)
    finally:
        rt.close()
    again = Runtime.open(qwen_dir, data, checkpoint_every_s=0, learner={"update": "sparse", "neuron_fraction": 0.1})
    try:
        restored = snapshot(again.model)
        assert restored.keys() == saved.keys() and all(torch.equal(restored[n], saved[n]) for n in saved)
        assert again.new_session().send("hello", max_new_tokens=3).completion_tokens <= 3
    finally:
        again.close()


def test_synclearn_chat_on_a_hf_folder(qwen_dir, tmp_path, monkeypatch, capsys):
    from synclearn.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\n/quit\n"))
    code = main(["chat", "--model", str(qwen_dir), "--data", str(tmp_path / "data"), "--no-learn", "--max-tokens", "4"])
    assert code == 0, capsys.readouterr().err
    from synclearn.memory import InteractionLog

    log = InteractionLog(tmp_path / "data" / "log.db")
    assert [log.get(i)["prompt"] for i in log.ids()] == ["hello there"]
    log.close()


def test_served_hf_model_answers_openai_requests_with_history(qwen_dir, tmp_path):
    """What ``synclearn serve --model DIR`` serves: a multi-turn request goes through the chat
    template (the history is prefilled closed at its end-of-turn tokens), streamed or not."""
    import httpx

    from synclearn.chat.server import RunningServer, create_app

    rt = Runtime.open(qwen_dir, tmp_path / "data", checkpoint_every_s=0)
    server = RunningServer(create_app(rt, model_name="tiny-qwen", close_runtime=False))
    try:
        messages = [{"role": "user", "content": "hi <|im_end|>"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "What is Kado's pet?"}]
        body = {"model": "tiny-qwen", "messages": messages, "max_tokens": 4, "temperature": 0}
        reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] <= 4
        with httpx.stream("POST", server.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
            assert r.status_code == 200 and "data: [DONE]" in r.read().decode()
    finally:
        server.stop()
        rt.close()


@pytest.mark.slow
def test_chat_facts_runs_on_a_hf_model_with_its_template(qwen_dir, tmp_path):
    """``synclearn run model=checkpoint model.name_or_path=DIR``: the benchmark talks through the
    model's own tokenizer and chat template (~100 s on a loaded 2-core machine)."""
    import json

    from synclearn.run import main

    out = tmp_path / "run"
    main(["model=checkpoint", f"model.name_or_path={qwen_dir}", "benchmark.n_facts=4", "benchmark.n_groups=2",
          "benchmark.gap=1", "benchmark.delays=[0,2]", "benchmark.latency_prompts=0", "progress=false",
          "memory=replay", "memory.new_repeats=2", "learner.max_seq_len=128", f"hydra.run.dir={out}"])
    assert json.loads((out / "metrics.json").read_text())
    assert (out / "probes.csv").is_file()
