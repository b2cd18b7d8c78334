"""Sweeps beyond one job at a time: Hydra's joblib launcher runs jobs in parallel processes with
their share of the cores, the launcher configs compose, Optuna searches the learner's settings on
the objective `synclearn run` returns."""

import json
import os
import re

import pytest
import yaml
from hydra import compose, initialize_config_dir

from synclearn.run import CONF_DIR, main
from synclearn.sweep import ThreadsPerJob, sweep_objective, threads_per_job

DIGITS = ["experiment=split_digits", "benchmark.epochs=1", "benchmark.d_model=32", "benchmark.d_ff=64"]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_joblib_sweep_runs_both_jobs_in_worker_processes_with_their_share_of_the_cores(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    assert main(["-m", *DIGITS, "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                 f"hydra.sweep.dir={sweep}"]) == 0
    for job, seed in ((0, 0), (1, 1)):
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        assert 0 <= metrics["acc"] <= 1
        assert f"seed={seed}" in yaml.safe_load((sweep / str(job) / ".hydra" / "overrides.yaml").read_text())
        found = re.search(r"torch threads of this job: (\d+) \(pid (\d+); 2 jobs at once",
                          (sweep / str(job) / "run.log").read_text())
        assert found, (sweep / str(job) / "run.log").read_text()
        assert int(found.group(1)) == threads_per_job(2) and int(found.group(2)) != os.getpid()


def test_threads_per_job_share_the_cores():
    assert threads_per_job(2, cores=2) == 1 and threads_per_job(3, cores=16) == 5 and threads_per_job(4, cores=2) == 1
    assert threads_per_job(-1, cores=8) == 1  # joblib's "one job per core"
    assert threads_per_job(1, cores=4) == 4


def launcher_config(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True).hydra


def test_launcher_configs_compose_and_hand_the_job_its_cores():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    basic = launcher_config()
    assert basic.callbacks.threads_per_job.n_jobs is None and basic.callbacks.threads_per_job.cores is None
    local = launcher_config("hydra/launcher=local")
    assert local.launcher._target_.endswith("JoblibLauncher") and local.launcher.n_jobs == 2
    assert local.callbacks.threads_per_job.n_jobs == 2
    if pytest.importorskip("hydra_plugins.hydra_submitit_launcher"):
        slurm = launcher_config("hydra/launcher=slurm", "hydra.launcher.cpus_per_task=8")
        assert slurm.launcher._target_.endswith("SlurmLauncher") and slurm.launcher.tasks_per_node == 1
        assert slurm.callbacks.threads_per_job.cores == 8 and slurm.callbacks.threads_per_job.n_jobs is None


def test_the_sequential_launcher_leaves_threads_alone():
    import torch

    before = torch.get_num_threads()
    ThreadsPerJob().on_job_start(config=None)
    assert torch.get_num_threads() == before
    ThreadsPerJob(cores=1).on_job_start(config=None)
    assert torch.get_num_threads() == 1


def test_sweep_objective_is_the_metric_minus_the_drift_the_benchmark_reports():
    chat = {"acc": 0.6, "text_nll_change": 0.05, "bwt": -0.1, "series": {}}
    spec = {"metric": "acc", "penalties": {"text_nll_change": 2.0}}
    assert sweep_objective(chat, spec) == pytest.approx(0.5)
    assert sweep_objective({"acc": 0.7, "bwt": 0.0}, spec) == pytest.approx(0.7)  # no base drift reported
    assert sweep_objective({"acc": 0.7}) == 0.7 and sweep_objective({"wall_s": 3.0}) is None
    with pytest.raises(ValueError) as err:
        sweep_objective(chat, {"metric": "recall"})
    assert "'recall'" in str(err.value) and "acc" in str(err.value) and "text_nll_change" in str(err.value)
    with pytest.raises(ValueError, match="unknown keys"):
        sweep_objective(chat, {"metric": "acc", "goal": "max"})


def test_optuna_searches_the_learner_settings_on_the_returned_objective(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "search"
    assert main(["-m", *DIGITS, "hydra/sweeper=learner_search", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
                 f"hydra.sweep.dir={sweep}"]) == 0
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = []
    for job in (0, 1):
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((sweep / str(job) / ".hydra" / "overrides.yaml").read_text()))
        assert metrics["lr"] == pytest.approx(float(overrides["learner.lr"]))  # the trial's settings were used
        assert 3e-4 <= float(overrides["learner.lr"]) <= 3e-2 and 0 <= float(overrides["memory.replay_ratio"]) <= 0.9
        trials.append((metrics["acc"], overrides))  # split-digits reports no base drift: the objective is acc
    best_acc, best = max(trials, key=lambda t: t[0])
    assert result["best_value"] == pytest.approx(best_acc)
    assert {k: pytest.approx(float(v)) for k, v in best.items() if k in result["best_params"]} == result["best_params"]
    assert set(result["best_params"]) == {"learner.lr", "learner.neuron_fraction", "memory.replay_ratio",
                                          "memory.consolidation.fraction"}


def test_ray_configs_compose_where_the_plugin_is_installed():
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    cluster = launcher_config("hydra/launcher=ray_cluster")
    assert cluster.launcher._target_.endswith("RayLauncher") and cluster.launcher.ray.init.address == "auto"
    assert cluster.callbacks.threads_per_job.cores == cluster.launcher.ray.remote.num_cpus == 2


def test_results_script_runs_sweeps_in_parallel_where_the_cores_allow():
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_script", CONF_DIR.parent / "experiments" / "results.py")
    results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results)
    cores = len(os.sched_getaffinity(0))
    assert results.parallel_jobs("split_digits") == cores and results.parallel_jobs("text_domains") == cores
    assert results.parallel_jobs("chat_facts") == max(1, cores // 2)  # serving + learning threads per run
    assert results.parallel_jobs("chat_facts", jobs=3) == 3
    assert results.launcher_overrides(1) == []
    assert results.launcher_overrides(2) == ["hydra/launcher=local", "hydra.launcher.n_jobs=2"]
