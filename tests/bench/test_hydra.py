"""Hydra configuration: every option of every group composes and builds; tiny runs and a tiny
multirun end to end (real model, real log, real learner attached), then ``synclearn report``."""

import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf

from synclearn.eval import report
from synclearn.bench.experiment import MemorySetup, benchmark_config, learner_options
from synclearn.learn import Learner
from synclearn.options import AttachOptions, LearnerOptions, ServeOptions
from synclearn.run import CONF_DIR, main

GROUPS = ("model", "learner", "memory", "replay", "benchmark", "serve", "experiment")


pytestmark = pytest.mark.usefixtures("one_thread")


def options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose_with(*overrides, config_name="config"):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=False)


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), group


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_builds(group, option, tiny_model):
    cfg = compose_with(f"{group}={option}")
    assert cfg.seed == 0
    for name in ("model", "learner", "memory", "replay", "benchmark", "serve"):
        target = cfg[name]["_target_"]
        assert callable(get_method(target)), target
    # everything but the model (the chat base would be pretrained) is built from its config
    memory = instantiate(cfg.memory)
    assert isinstance(memory, MemorySetup) or hasattr(memory, "attach_options")  # MemorySetup or MemoryManager
    options = instantiate(cfg.learner)
    assert isinstance(options, LearnerOptions) and options == learner_options(cfg.learner)
    learner = Learner(tiny_model, None, **options.kwargs())
    assert isinstance(learner, Learner) and learner.update == cfg.learner["update"]
    memory.bind(learner, instantiate(cfg.replay))
    assert callable(memory.policy) and memory.attach_options()["batch_size"] == memory.batch_size
    serve = instantiate(cfg.serve)
    assert isinstance(serve, ServeOptions)
    chosen = AttachOptions(**{k: v for k, v in memory.attach_options().items() if k not in ("policy", "consolidation")},
                           **serve.attach_options())  # the memory and serve groups never set the same field
    assert chosen.batch_size == memory.batch_size
    bench, needs_model = benchmark_config(cfg.benchmark)
    assert callable(instantiate(bench)) and needs_model == (cfg.benchmark._target_.endswith("chat_facts.run"))
    if cfg.model._target_.endswith("pretrained_model"):  # the pretraining settings are a valid config
        from synclearn.learn.pretrain import PretrainConfig

        settings = OmegaConf.to_container(cfg.model, resolve=True)
        PretrainConfig(**{k: v for k, v in settings.items() if k not in ("_target_", "cache_dir", "progress", "threads")})


def test_pretrain_config_composes():
    cfg = compose_with("model.steps=7", config_name="pretrain")
    assert cfg.model.steps == 7 and cfg.force is False


@pytest.fixture(scope="module")
def tiny_model():
    from synclearn.model import MCSDConfig, build_model

    return build_model(MCSDConfig(d_model=32, n_layers=2, n_channels=4, d_ff=64, predictor_rank=4))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_tiny_experiment_end_to_end(tmp_path, cache, capsys):
    out = tmp_path / "run"
    assert main(["experiment=tiny", f"hydra.run.dir={out}", f"model.cache_dir={cache}"]) == 0
    printed = capsys.readouterr().out
    assert "recall by delay" in printed and f"-> {out}" in printed.splitlines()[-1]
    for name in ("interactions.db", "metrics.json", "metrics.csv", "summary.txt", "probes.csv", "retention.png",
                 "accuracy_matrix.png", "forgetting.png", "latency.png", "checkpoints/checkpoint.json",
                 ".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    # 4 facts, 2 groups, gap 1, delays up to 5: 4 * 2 teaching + small talk to reach the last delay
    assert metrics["facts"] == 4 and metrics["interactions"] == 8 + 4
    assert metrics["probes"] == 4 * 3 and metrics["learner_steps"] >= metrics["interactions"]
    assert metrics["learner_errors"] == 0 and metrics["pretrained_now"] == 1.0
    for key in ("recall_d0", "rank_recall_d5", "acc", "bwt", "forgetting", "fwt", "latency_overhead_p50"):
        assert 0 <= metrics[key] <= 1 or key in ("bwt", "fwt", "latency_overhead_p50"), key
    assert len(metrics["series"]["R_exact"]) == 2
    # what the learner learned from teaching turns is the fact, carried as the user's correction
    from synclearn.memory import InteractionLog

    with InteractionLog(out / "interactions.db") as log:
        rows = list(log.iter_rows())
    taught = [r for r in rows if (r["feedback_correction"] or "").startswith("It's ")]
    stream = [r for r in rows if r["id"] <= metrics["interactions"]]  # later rows: the latency measurement
    assert len(taught) == 4 and all(r["learned_at"] is not None for r in stream)
    assert all("'s " in r["prompt"] for r in taught)
    assert metrics["corrected_turns"] == sum(bool(r["feedback_correction"]) for r in stream)


@pytest.mark.slow
def test_sweep_over_learners_and_memories(tmp_path, cache):
    sweep = tmp_path / "sweep"
    assert main(["-m", "experiment=tiny", "learner=sparse,lora,full", "memory=none,replay,consolidate",
                 f"hydra.sweep.dir={sweep}", f"model.cache_dir={cache}"]) == 0
    assert len(list(sweep.glob("*/metrics.json"))) == 9


def test_tiny_multirun_then_report(tmp_path, cache, capsys):
    sweep = tmp_path / "sweep"
    assert main(["-m", "experiment=tiny", "memory=none,consolidate", f"hydra.sweep.dir={sweep}",
                 f"model.cache_dir={cache}"]) == 0
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert [p.name for p in runs] == ["0", "1"]
    assert yaml.safe_load((runs[1] / ".hydra" / "overrides.yaml").read_text()) == ["experiment=tiny", "memory=consolidate",
                                                                      f"model.cache_dir={cache}"]
    capsys.readouterr()
    assert report.main([str(sweep)]) == 0
    table = capsys.readouterr().out
    assert "memory=none" in table.replace(" ", "") or "none" in table
    assert (sweep / "report.md").is_file() and (sweep / "report.csv").is_file()
    rows = (sweep / "report.csv").read_text().splitlines()
    assert len(rows) == 3 and "recall_d5" in rows[0]
    assert Path(sweep / "report.png").is_file()


@pytest.mark.parametrize("update,policy", [("sparse", "damp"), ("lora", "ewc")])
def test_memory_damp_damps_sparse_learners_and_gives_dense_ones_ewc(update, policy, tiny_model):
    cfg = compose_with("memory=damp", f"learner={update}")
    memory = instantiate(cfg.memory)
    memory.bind(Learner(tiny_model, None, **instantiate(cfg.learner).kwargs()), instantiate(cfg.replay))
    assert memory.consolidator.policy == policy
    with pytest.raises(ValueError, match="sparse_policy='freeze'"):
        instantiate(compose_with("memory.consolidation.sparse_policy=freeze").memory).bind(
            Learner(tiny_model, None, **instantiate(cfg.learner).kwargs()), instantiate(cfg.replay))
