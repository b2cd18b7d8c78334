"""Checkpoints: exact round trips, crashes mid-save (simulated and real SIGKILL), resume bookkeeping."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from synclearn.chat.checkpoint import MANIFEST, CheckpointStore
from synclearn.chat.runtime import Runtime
from synclearn.data import chat_pairs
from synclearn.learn import Learner, guard_for
from synclearn.memory import InteractionLog
from synclearn.model import load_model
from tests.chat.conftest import MODEL


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def same_tensors(a, b):
    """Deep equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture
def examples():
    return [{"prompt": p, "response": r} for p, r in ((e["prompt"], e["response"]) for e in chat_pairs(8, seed=3))]


def test_round_trip_is_exact_and_drops_journal_steps_the_weights_lack(tmp_path, examples):
    store = CheckpointStore(tmp_path / "ckpt")
    learner = Learner(load_model(MODEL), None, journal=tmp_path / "journal")
    for i in range(3):
        learner.step(examples[2 * i : 2 * i + 2])
    manifest = store.save(learner.model, learner, base=MODEL)
    saved_weights, saved_state = weights(learner.model), learner.state_dict()
    learner.step(examples[6:])  # after the checkpoint: in the journal, not in the checkpoint
    assert learner.journal.indices == [0, 1, 2, 3]

    model, restored, again = store.restore(lambda m: Learner(m, None, journal=tmp_path / "journal"))
    assert again == manifest and manifest["weight_version"] == 3 and guard_for(model).version == 3
    assert same_tensors(weights(model), saved_weights) and same_tensors(restored.state_dict(), saved_state)
    assert restored.journal.indices == [0, 1, 2]
    # and it goes on exactly like the original did
    restored.step(examples[6:])
    original = Learner(load_model(MODEL), None)
    for i in range(4):
        original.step(examples[2 * i : 2 * i + 2])
    assert same_tensors(weights(model), weights(original.model))


def test_lora_learner_round_trip(tmp_path, examples):
    store = CheckpointStore(tmp_path)
    learner = Learner(load_model(MODEL), None, update="lora")
    learner.step(examples[:2])
    manifest = store.save(learner.model, learner, base=MODEL)
    assert manifest["model"] == "weights"
    model, restored, _ = store.restore(lambda m: Learner(m, None, update="lora"))
    assert same_tensors(weights(model), weights(learner.model))
    assert restored.committed_steps == 1
    with pytest.raises(ValueError, match="'lora' learner"):
        store.restore(lambda m: Learner(m, None))


def test_a_crash_before_the_manifest_leaves_the_previous_checkpoint(tmp_path, examples):
    store = CheckpointStore(tmp_path, keep=2)
    learner = Learner(load_model(MODEL), None)
    learner.step(examples[:2])
    first = store.save(learner.model, learner, base=MODEL)
    first_weights = weights(learner.model)
    learner.step(examples[2:4])
    # what a crash mid-save leaves: a half-written folder and a temp manifest, old manifest intact
    half = tmp_path / "ckpt-000002"
    (half / "model").mkdir(parents=True)
    (half / "model" / "model.safetensors").write_bytes(b"\x00" * 100)
    (tmp_path / f".{MANIFEST}.x1y2").write_text('{"format": 1, "fold')
    model, restored, manifest = store.restore(lambda m: Learner(m, None))
    assert manifest == first and restored.committed_steps == 1 and same_tensors(weights(model), first_weights)
    second = store.save(learner.model, learner, base=MODEL)
    third = store.save(learner.model, learner, base=MODEL)
    assert (second["seq"], third["seq"]) == (3, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "ckpt-000003", "ckpt-000004"]


# A child that learns and checkpoints in a loop, printing each manifest's seq once written.
CHILD = r"""
import sys
from synclearn.chat.checkpoint import CheckpointStore
from synclearn.data import chat_pairs
from synclearn.learn import Learner
from synclearn.model import load_model
store = CheckpointStore(sys.argv[1])
learner = Learner(load_model("mcsd-tiny"), None)
pairs = chat_pairs(64, seed=5)
for i in range(10_000):
    learner.step([{"prompt": e["prompt"], "response": e["response"]} for e in pairs[i % 60 : i % 60 + 2]])
    print(store.save(learner.model, learner, base="mcsd-tiny")["seq"], flush=True)
"""


def test_sigkill_at_random_moments_of_saving_leaves_a_loadable_checkpoint(tmp_path):
    rng = np.random.default_rng(7)
    for trial in range(3):
        root = tmp_path / f"t{trial}"
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(root)], stdout=subprocess.PIPE, text=True)
        target = int(rng.integers(2, 6))
        acked = 0
        for line in child.stdout:  # bounded: the child prints one line per save
            acked = int(line)
            if acked >= target:
                break
        child.kill()
        child.wait(timeout=30)
        assert acked >= target
        model, learner, manifest = CheckpointStore(root).restore(lambda m: Learner(m, None))
        assert manifest["seq"] >= acked and learner.committed_steps == manifest["committed_steps"] == manifest["seq"]
        assert guard_for(model).version == manifest["weight_version"]
        assert json.loads((root / MANIFEST).read_text())["folder"] == manifest["folder"]


def test_rows_learned_after_the_checkpoint_are_learned_again_after_a_restart(tmp_path):
    rt = Runtime.open(MODEL, tmp_path, checkpoint_every_s=0)
    chat = rt.new_session("s", max_new_tokens=6, temperature=0.9, seed=1, stop=["\x00"])
    for text in ("one", "two", "three", "four"):
        chat.send(text)
    rt.learner.run(1, batch_size=2, replay_ratio=0.0)
    rt.log.mark_learned(rt.log.ids()[:2])  # (what the replay builder records after a step)
    rt.save()
    rt.learner.run(1)  # learned after the checkpoint; the process then dies without saving
    rt.log.mark_learned(rt.log.ids()[2:])
    assert rt.log.ids(learned=False) == []
    rt.log.close()
    again = Runtime.open(MODEL, tmp_path, checkpoint_every_s=0)
    try:
        assert again.log.ids(learned=False) == again.log.ids()[2:]
        assert again.learner.committed_steps == 1
    finally:
        again.close()


def test_the_log_survives_as_the_log(tmp_path):
    """A checkpoint never copies the log: it records its size, the log stays the one file."""
    rt = Runtime.open(MODEL, tmp_path, checkpoint_every_s=0)
    rt.new_session("s", max_new_tokens=3, stop=["\x00"]).send("hi")
    manifest = rt.save()
    rt.close()
    assert manifest["log"] == {"rows": 1, "max_id": 1, "seq": manifest["log"]["seq"]}
    with InteractionLog(tmp_path / "log.db") as log:
        assert log.count() == 1


def test_a_hugging_face_model_serves_learns_and_resumes(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.chat.conftest import openai_client, serve_runtime

    cfg = LlamaConfig(vocab_size=264, hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    rt = Runtime.open(tmp_path / "llama", tmp_path / "data", checkpoint_every_s=0)
    with serve_runtime(rt, model_name="llama") as srv:
        client = openai_client(srv.url)
        history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                   {"role": "user", "content": "again"}]
        comp = client.chat.completions.create(model="llama", messages=history, max_tokens=6, temperature=0.9)
        assert comp.model_extra["synclearn"]["interaction_id"] == 1
        rt.attach(batch_size=2, idle_replay=True, max_steps=2)
        for i in range(2):
            client.chat.completions.create(model="llama", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=6,
                                           temperature=0.9)
        assert rt.handle.wait_for_steps(2, 60)
    rt.close()
    assert rt.last_checkpoint["model"] == "weights" and rt.last_checkpoint["weight_version"] == 2
    again = Runtime.open(tmp_path / "llama", tmp_path / "data", checkpoint_every_s=0)
    try:
        assert again.version == 2 and same_tensors(again.model.state_dict(), rt.model.state_dict())
    finally:
        again.close()
