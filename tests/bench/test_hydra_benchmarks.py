"""Split-digits and text-domains as Hydra benchmarks: `synclearn run experiment=...` end to end
(tiny settings), the learner x memory -> method mapping, a multirun tabulated by `synclearn
report`, and clear errors for combinations the benchmarks have no method for."""

import csv
import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from synclearn.eval import report
from synclearn.bench.experiment import run_experiment
from synclearn.bench.split_digits import DEFAULT_LR, hydra_method, run_split_digits
from synclearn.run import CONF_DIR, main

DIGITS = ["experiment=split_digits", "benchmark.epochs=1", "benchmark.d_model=32", "benchmark.d_ff=64"]
TEXT = ["experiment=text_domains", "benchmark.domains=[arithmetic,code]", "benchmark.steps_per_domain=3",
        "benchmark.batch_size=4", "benchmark.buffer_size=8", "benchmark.segment_bytes=64", "benchmark.warmup_steps=2",
        "benchmark.model_overrides={d_model: 32, d_ff: 64, n_channels: 2, predictor_rank: 0}"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_model_group(monkeypatch):
    """These benchmarks build their own model: building the model group (the chat base would be
    pretrained) is an error."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model group was built")

    monkeypatch.setattr("synclearn.learn.pretrain.pretrained_model", refuse)
    monkeypatch.setattr("synclearn.model.load_model", refuse)


def compose_with(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_split_digits_run_writes_metrics_like_the_plain_function(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*DIGITS, "learner=sparse", "memory=consolidate", f"hydra.run.dir={out}"]) == 0
    assert "split-digits class-IL, consolidation" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("acc", "bwt", "forgetting", "fwt"):
        assert -1 <= metrics[key] <= 1, key
    assert metrics["method"] == "consolidation" and metrics["lr"] == DEFAULT_LR["class"]["consolidation"]
    assert len(metrics["series"]["R"]) == 5 and metrics["series"]["settings"]["consolidation"] == "lock"
    # the benchmark pins the lock fraction its learning rates were tuned at, not the chat default
    assert compose_with("memory=consolidate").memory.consolidation.fraction != 0.1
    assert metrics["series"]["settings"]["lock_fraction"] == 0.1
    assert (out / "split_digits_consolidation_class_s0.png").is_file() and (out / "summary.txt").is_file()
    assert not (out / "interactions.db").exists() and not (out / "checkpoints").exists()
    # the Hydra path is the plain function with the groups' settings
    plain = run_split_digits("consolidation", "class", seed=0, epochs=1, d_model=32, d_ff=64)
    assert metrics["series"]["R"] == plain["R"] and metrics["acc"] == plain["acc"]


def test_text_domains_run_writes_metrics(tmp_path):
    out = tmp_path / "run"
    assert main([*TEXT, "learner=lora", "memory=replay", "seed=1", f"hydra.run.dir={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "lora+replay" and metrics["steps"] == 6 and metrics["nll"] > 0
    for key in ("acc", "bwt", "forgetting", "fwt"):
        assert -1 <= metrics[key] <= 1, key
    assert len(metrics["series"]["R_nll"]) == 2 and metrics["series"]["settings"]["seed"] == 1
    assert (out / "text_domains_lora-replay_s1.png").is_file()
    assert any(line.startswith("text-domains arithmetic -> code") for line in (out / "summary.txt").read_text().splitlines())


def test_multirun_then_report_has_one_row_per_learner_and_memory(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    assert main(["-m", *DIGITS, "learner=sparse,full", "memory=none,replay", f"hydra.sweep.dir={sweep}"]) == 0
    assert len(list(sweep.glob("*/metrics.json"))) == 4
    capsys.readouterr()
    assert report.main([str(sweep)]) == 0
    table = capsys.readouterr().out
    assert "Mean ± std over seeds" in table and "forgetting" in table
    with open(sweep / "report_groups.csv", newline="") as f:
        groups = list(csv.DictReader(f))
    assert sorted((g["learner"], g["memory"]) for g in groups) == [
        ("full", "none"), ("full", "replay"), ("sparse", "none"), ("sparse", "replay")]
    for column in ("acc", "bwt", "forgetting", "fwt"):
        assert all(-1 <= float(g[f"{column}_mean"]) <= 1 for g in groups), column


@pytest.mark.parametrize("learner,memory,method", [
    ("sparse", "none", "naive"), ("sparse", "replay", "replay"), ("sparse", "consolidate", "consolidation"),
    ("lora", "none", "lora"), ("lora", "replay", "lora+replay"), ("lora", "consolidate", "lora+replay+ewc"),
    ("full", "none", "full"), ("full", "replay", "full+replay"), ("full", "consolidate", "full+replay+ewc"),
    ("sparse", "anchors", "anchors"),
])
def test_learner_and_memory_groups_map_to_methods(learner, memory, method):
    cfg = compose_with("experiment=split_digits", f"learner={learner}", f"memory={memory}")
    assert hydra_method(cfg.learner["update"], instantiate(cfg.memory)) == method
    assert cfg.learner.lr is None  # the experiment asks for the benchmark's tuned rate


def test_explicit_learning_rate_and_consolidation_settings_are_used(tmp_path):
    cfg = compose_with(*DIGITS, "learner=full", "memory=consolidate", "memory.replay_ratio=0",
                       "learner.lr=0.001", "memory.consolidation.strength=100")
    metrics = run_experiment(cfg, tmp_path)
    assert metrics["method"] == "full+ewc" and metrics["lr"] == 1e-3
    assert metrics["series"]["settings"]["consolidation"] == "ewc"


@pytest.mark.parametrize("overrides,message", [
    (["learner=sparse", "memory=consolidate", "memory.replay_ratio=0"], r"learner.update=.sparse. with no replay .* is not a method .sparse consolidation, neuron locking, needs replay"),
    (["memory=manage"], "memory.fading is set"),
    (["memory=replay", "memory.journal=true"], "memory.journal is true"),
    (["learner=lora", "memory=consolidate", "memory.consolidation.policy=lock"], "policy='lock' protects neurons"),
])
def test_bad_combinations_name_the_problem(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_experiment(compose_with(*DIGITS, *overrides), tmp_path)


def test_learner_seed_must_follow_the_run_seed(tmp_path):
    with pytest.raises(ValueError, match=r"learner.seed=5 differs from seed=0"):
        run_experiment(compose_with(*DIGITS, "learner.seed=5"), tmp_path)
