"""The chat-facts benchmark on a tiny real model with a real log and a real attached learner."""

import csv
import json

import numpy as np
import pytest
import torch

from synclearn.chat import ChatSession
from synclearn.data.facts import Fact, generate_facts, save_facts
from synclearn.bench import chat_facts
from synclearn.bench.experiment import MemorySetup, ServeSettings, make_consolidation
from synclearn.eval.recall import candidate_logprobs, probe_fact
from synclearn.learn import Learner
from synclearn.memory import InteractionLog, ReplayBatchBuilder, uniform
from synclearn.model import MCSDConfig, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model():
    return build_model(MCSDConfig(d_model=32, n_layers=2, n_channels=4, d_ff=64, predictor_rank=0, chunk_size=16))


def test_stream_layout():
    turns, ends = chat_facts.build_stream(6, n_groups=3, gap=2, max_delay=10)
    taught = [i for i, f in enumerate(turns) if f is not None]
    assert [turns[i] for i in taught] == list(range(6)) and taught == list(range(0, 18, 3))
    assert ends == [6, 12, len(turns)] and len(turns) == taught[-1] + 1 + 10  # the last fact reaches delay 10
    turns, ends = chat_facts.build_stream(4, n_groups=1, gap=5, max_delay=2)  # the gap already covers it
    assert len(turns) == 24 and ends == [24]


def test_correcting_log_attaches_the_fact_to_the_teaching_turn(tmp_path, model):
    with InteractionLog(tmp_path / "log.db") as log:
        front = chat_facts.CorrectingLog(log)
        session = ChatSession(model, front, max_new_tokens=4)
        fact = Fact("Kado", "pet", "a parrot")
        front.expect(fact.question(), fact.answer())
        taught = session.send(fact.question()).interaction_id
        other = session.send(fact.question()).interaction_id  # only the expected turn is corrected
        assert log.get(taught)["feedback_correction"] == "It's a parrot."
        assert log.get(other)["feedback_correction"] is None
        session.reset()
        reply = session.send("Hello!").text
        session.reset()
        front.expect("Hello!", reply)  # a right reply needs no correction
        assert log.get(session.send("Hello!").interaction_id)["feedback_correction"] is None
        batch = ReplayBatchBuilder(log, uniform, replay_ratio=0.0, batch_size=2).next_batch()
        assert batch[0]["response"] == "It's a parrot."  # what the learner trains on


@torch.no_grad()
@pytest.mark.parametrize("history", [[], [{"role": "user", "content": "Remember: Kado's pet is a parrot."},
                                          {"role": "assistant", "content": "Got it."}]])
def test_candidate_logprobs_match_token_by_token_decoding(model, history):
    tok = model.tokenizer
    question, answers = "What is Kado's pet?", ["It's a cat.", "It's a parrot."]
    got = candidate_logprobs(model, question, answers, history=history)
    for k, answer in enumerate(answers):  # reference: prefill the prompt, then the recurrent form token by token
        logits, state = model.prefill(torch.tensor([[tok.BOS] + tok.chat([*history, {"role": "user", "content": question}])]))
        total, last = 0.0, logits[0, -1]
        for t in tok.encode(answer) + [tok.END]:
            total += float(last.detach().log_softmax(-1)[t])
            step_logits, state = model.step(torch.tensor([t]), state)
            last = step_logits[0]
        assert got[k].item() == pytest.approx(total, abs=1e-3)


def test_probe_scores_a_model_that_learned_the_fact(model):
    fact = Fact("Kado", "pet", "a parrot")
    learner = Learner(model, update="full", lr=1e-2, seed=0)
    for _ in range(25):
        learner.step([{"prompt": fact.question(), "response": fact.answer()}])
    session = ChatSession(model, None, max_new_tokens=40)
    probe = probe_fact(model, session, fact, fact.question())
    assert probe.ranked and probe.rank == 0 and probe.candidates == 10 and "parrot" in probe.reply
    assert probe.exact == (probe.reply.strip() == fact.answer()) and probe.version == 25
    wrong = probe_fact(model, session, Fact("Kado", "pet", "a cat"), fact.question())
    assert not wrong.exact and not wrong.ranked and wrong.rank > 0


def run_tiny(model, tmp_path, memory, **options):
    learner = Learner(model, None, update="sparse", neuron_fraction=0.25, plastic_layers=1, lr=1e-2, seed=0)
    memory.bind(learner, uniform)
    settings = dict(n_facts=4, n_groups=2, gap=1, delays=[0, 3], latency_prompts=2, progress=False, retention_probes=4)
    with InteractionLog(tmp_path / "log.db") as log:
        out = chat_facts.run(model, learner, log, tmp_path, memory=memory, serve=ServeSettings(max_new_tokens=8),
                             seed=0, **{**settings, **options})
        rows = list(log.iter_rows())
    return out, rows, learner


def test_run_writes_metrics_probes_and_plots(model, tmp_path):
    memory = MemorySetup(replay_ratio=0.5, batch_size=2, consolidation=lambda l: make_consolidation(l, "auto"),
                         consolidate_every=2)
    out, rows, learner = run_tiny(model, tmp_path, memory)
    assert out["facts"] == 4 and out["interactions"] == 8 + 2 and out["probes"] == 8
    # the user waits until each turn is learned: rehearsed, at most new_repeats steps per turn
    stream = [r for r in rows if r["id"] <= 10]
    assert all(r["learned_at"] is not None for r in stream) and out["learner_errors"] == 0
    assert 4 <= out["learner_steps"] <= memory.new_repeats * 10
    assert any(learner.protected(layer) is not None for layer in learner.plastic_layers), "consolidation locked neurons"
    for key in ("recall_d0", "recall_d3", "rank_recall_d0", "acc", "bwt", "forgetting", "fwt", "half_life",
                "latency_overhead_p50", "token_ms_p50_detached", "token_ms_p50_attached"):
        assert isinstance(out[key], float), key
    assert np.array(out["series"]["R_exact"]).shape == (2, 2)
    with open(tmp_path / "probes.csv") as f:
        probes = list(csv.DictReader(f))
    assert sorted(int(p["delay"]) for p in probes) == [0] * 4 + [3] * 4
    assert all(int(p["t"]) - int(p["delay"]) in (1, 3, 5, 7) for p in probes)  # taught at turns 1, 3, 5, 7
    for png in ("retention.png", "accuracy_matrix.png", "forgetting.png", "latency.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    taught = [r for r in rows if (r["feedback_correction"] or "").startswith("It's ")]
    assert len(taught) == 4 and out["corrected_turns"] >= 4  # facts, and small talk the model got wrong
    assert any("recall by delay" in line for line in out["summary"])
    json.dumps({k: v for k, v in out.items() if k != "summary"})  # metrics are JSON-ready
    for key in ("recall_other_d0", "recall_other_d3", "text_nll_change", "chat_nll_change", "locality",
                "format_share_before", "free_share_l1"):
        assert isinstance(out[key], float), key
    assert any("base retention" in line for line in out["summary"])
    assert any("other words" in line for line in out["summary"])


TIMING = ("_s", "_ms", "_p50", "_p99", "_stream")  # wall-clock figures (suffixes) vary run to run


def figures(out):
    return {k: "nan" if v != v else v for k, v in out.items()
            if isinstance(v, (int, float)) and not k.endswith(TIMING) and "latency" not in k}


def test_same_seed_same_figures_with_retention_replay_and_the_memory_manager(model, tmp_path):
    """Replay by retention reads the benchmark's clock, not the wall clock: two runs agree."""
    from synclearn.memory import MemoryManager, RetentionAware

    runs = []
    initial = {n: t.clone() for n, t in model.state_dict().items()}
    for k in range(2):
        memory = MemoryManager(replay_ratio=0.5, batch_size=2, new_repeats=3, learned_loss=0.05, background="none",
                               protection={"budget": 0.4, "half_life_steps": 5},
                               anchors={"turns": 16, "per_step": 2, "top_k": 4})
        net = model
        if k == 1:
            net = type(model)(model.config)
            net.load_state_dict(initial)
        learner = Learner(net, None, update="sparse", neuron_fraction=0.25, plastic_layers=1, lr=1e-2, seed=0,
                          memory=memory)
        memory.bind(learner, RetentionAware())
        assert len(learner.anchors) == 16
        with InteractionLog(tmp_path / f"log{k}.db") as log:
            out = chat_facts.run(learner.model, learner, log, tmp_path / f"run{k}", memory=memory,
                                 serve=ServeSettings(max_new_tokens=8), seed=0, n_facts=4, n_groups=2, gap=1,
                                 delays=[0, 3], latency_prompts=0, progress=False, retention_probes=4)
        runs.append(figures(out))
    assert runs[0] == runs[1]
    assert runs[0]["probes"] == 8 and "free_share_l1" in runs[0] and "recall_other_d3" in runs[0]


def test_facts_from_a_file_and_paraphrased_probes(model, tmp_path):
    facts = [Fact("Ada", "pet", "a cat"), Fact("Bo", "sport", "golf"), Fact("Cy", "boat", "the Swift")]
    save_facts(facts, tmp_path / "facts.jsonl")
    out, rows, _ = run_tiny(model, tmp_path, MemorySetup(replay_ratio=0.0, batch_size=1), n_facts=0, n_groups=3,
                            facts_file=str(tmp_path / "facts.jsonl"), probe_form="paraphrase", latency_prompts=0,
                            filler_feedback="none")
    assert out["facts"] == 3 and "latency_overhead_p50" not in out
    corrected = [r["feedback_correction"] for r in rows if (r["feedback_correction"] or "").startswith("It's ")]
    assert sorted(corrected) == sorted(f.answer() for f in facts)
    assert out["corrected_turns"] == len(corrected)  # filler_feedback="none": small talk is learned as replied


def test_bad_settings_are_named(model, tmp_path):
    with pytest.raises(ValueError, match="probe_form"):
        run_tiny(model, tmp_path, MemorySetup(), probe_form="other")
    with pytest.raises(ValueError, match="filler_feedback"):
        run_tiny(model, tmp_path, MemorySetup(), filler_feedback="maybe")
    with pytest.raises(ValueError, match="n_groups=9"):
        run_tiny(model, tmp_path, MemorySetup(), n_groups=9)
    assert len(generate_facts(3)) == 3
