"""``synclearn report`` on real files in Hydra's output layout (2 configs x 2 seeds and variants)."""

import csv
import json
import math

import pytest
import yaml

from synclearn.eval import report

# (lr, seed) -> metrics. Hand-computed over seeds, sample std (ddof=1):
#   lr=0.1:  acc mean 0.85,  std sqrt(2 * 0.05**2) = 0.0707107; bwt mean -0.15, std 0.0707107
#   lr=0.01: acc mean 0.70,  std sqrt(2 * 0.10**2) = 0.1414214; bwt mean -0.05, std 0.0707107
METRICS = {
    ("0.1", 0): {"acc": 0.80, "bwt": -0.10, "steps": 100},
    ("0.1", 1): {"acc": 0.90, "bwt": -0.20, "steps": 100},
    ("0.01", 0): {"acc": 0.60, "bwt": 0.00, "steps": 100},
    ("0.01", 1): {"acc": 0.80, "bwt": -0.10, "steps": 100},
}


def _write_run(run_dir, overrides, metrics, config=None):
    (run_dir / ".hydra").mkdir(parents=True)
    if overrides is not None:
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    cfg = config or {"model": {"name": "mcsd-tiny"}, **dict(o.split("=", 1) for o in overrides or [])}
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"name": "run"}}}))
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def multirun(tmp_path):
    root = tmp_path / "multirun" / "2024-01-01" / "12-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(
        yaml.safe_dump({"hydra": {"mode": "MULTIRUN", "overrides": {"task": ["learner.lr=0.1,0.01", "seed=0,1"]}}})
    )
    for i, ((lr, seed), m) in enumerate(METRICS.items()):
        series = {"forgetting_curve": [None, 0.1, 0.2], "R": [[0.9, 0.1], [0.8, 0.9]]}
        _write_run(root / str(i), [f"learner.lr={lr}", f"seed={seed}"], {**m, **series})
    return root


def _read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_multirun_two_configs_two_seeds(multirun, capsys):
    assert report.main([str(multirun)]) == 0
    stdout = capsys.readouterr().out
    md = (multirun / "report.md").read_text()
    assert stdout == md
    assert "Sweep: `learner.lr=0.1,0.01` `seed=0,1`" in md
    assert "| run | learner.lr | seed | acc | bwt | steps |" in md
    assert "| 0 | 0.1 | 0 | 0.8000 | -0.1000 | 100 |" in md
    assert "| 0.1 | 0,1 | 2 | 0.8500 ± 0.0707 | -0.1500 ± 0.0707 | 100 ± 0 |" in md
    assert "| 0.01 | 0,1 | 2 | 0.7000 ± 0.1414 | -0.0500 ± 0.0707 | 100 ± 0 |" in md
    assert "`bwt`: BWT = " in md and "Lopez-Paz" in md  # each number names its definition

    runs = _read_csv(multirun / "report.csv")
    assert [(r["run"], r["learner.lr"], r["seed"]) for r in runs] == [
        ("0", "0.1", "0"), ("1", "0.1", "1"), ("2", "0.01", "0"), ("3", "0.01", "1")]
    assert float(runs[3]["acc"]) == 0.80
    assert "forgetting_curve" not in runs[0]  # nested series are not columns

    groups = _read_csv(multirun / "report_groups.csv")
    assert [g["learner.lr"] for g in groups] == ["0.1", "0.01"]
    assert "seed" not in groups[0] and groups[0]["n"] == "2"
    assert float(groups[0]["acc_mean"]) == pytest.approx(0.85)
    assert float(groups[0]["acc_std"]) == pytest.approx(math.sqrt(2 * 0.05**2))
    assert float(groups[1]["acc_mean"]) == pytest.approx(0.70)
    assert float(groups[1]["acc_std"]) == pytest.approx(math.sqrt(2 * 0.10**2))
    assert float(groups[1]["bwt_mean"]) == pytest.approx(-0.05)

    png = (multirun / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_series_are_kept_on_the_run(multirun):
    rep = report.aggregate(multirun)
    assert rep.runs[0].series["R"] == [[0.9, 0.1], [0.8, 0.9]]
    assert rep.runs[0].params_from == "overrides"


def test_choose_metrics_and_out_dir(multirun, tmp_path, capsys):
    out = tmp_path / "elsewhere"
    assert report.main([str(multirun), "--metrics", "bwt,acc", "--out", str(out)]) == 0
    md = capsys.readouterr().out
    assert "| run | learner.lr | seed | bwt | acc |" in md and "steps" not in md
    assert (out / "report.md").is_file() and (out / "report.png").is_file()
    assert not (multirun / "report.md").exists()
    assert report.main([str(multirun), "--metrics", "acc", "nope"]) == 2
    err = capsys.readouterr().err
    assert "['nope']" in err and "available: ['acc', 'bwt', 'steps']" in err


def test_single_run(tmp_path, capsys):
    run = tmp_path / "outputs" / "2024-01-01" / "12-00-00"
    _write_run(run, ["seed=3"], {"acc": 0.5, "online_acc": 0.25, "note": "text is ignored"})
    assert report.main([str(run)]) == 0
    md = capsys.readouterr().out
    assert "| 12-00-00 | 3 | 0.5000 | 0.2500 |" in md
    assert "| 3 | 1 | 0.5000 | 0.2500 |" in md  # one seed: mean only, no ± std
    assert "note" not in _read_csv(run / "report.csv")[0]


def test_config_only_runs_failed_run_and_numeric_order(tmp_path, capsys):
    root = tmp_path / "sweep"
    for i in range(11):  # 10 must sort after 9, not after 1
        cfg = {"seed": i % 2, "learner": {"update": "sparse" if i < 6 else "full", "steps": 5}}
        acc = None if i == 10 else 0.5 + 0.01 * i  # null in metrics.json reads as nan
        _write_run(root / str(i), None, {"acc": acc}, config=cfg)
    _write_run(root / "11", None, None, config={"seed": 0, "learner": {"update": "full", "steps": 5}})
    assert report.main([str(root)]) == 0
    md = capsys.readouterr().out
    # Only the config keys that differ between runs become columns.
    assert "| run | learner.update | seed | acc |" in md and "learner.steps" not in md
    assert "| full | 0,1,0,1,0 | 5 | 0.5750 ± 0.0129 (n=4) |" in md
    labels = [r["run"] for r in _read_csv(root / "report.csv")]
    assert labels == [str(i) for i in range(11)]
    assert "without metrics.json (failed or unfinished): 11" in md
    groups = {g["learner.update"]: g for g in _read_csv(root / "report_groups.csv")}
    assert groups["sparse"]["n"] == "6"
    assert float(groups["sparse"]["acc_mean"]) == pytest.approx(0.525)
    # Runs 6..9 have acc, run 10 is nan: the mean is over finite values, and says n=4.
    assert float(groups["full"]["acc_mean"]) == pytest.approx(0.575)
    assert "(n=4)" in md


def test_errors_name_the_problem(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "no metrics.json under" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    bad = tmp_path / "bad"
    _write_run(bad, ["seed=0"], None)
    (bad / "metrics.json").write_text("[1, 2]")
    assert report.main([str(bad)]) == 2
    assert "expected a JSON object" in capsys.readouterr().err
    (bad / "metrics.json").write_text("{}")
    (bad / ".hydra" / "overrides.yaml").write_text("- justakey\n")
    assert report.main([str(bad)]) == 2
    assert "'justakey' is not of the form key=value" in capsys.readouterr().err


def test_report_plot_counts_the_runs_behind_each_bar(multirun, tmp_path, monkeypatch):
    from synclearn.eval import plots

    calls = []
    real = plots.plot_metric_bars
    monkeypatch.setattr(plots, "plot_metric_bars", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    report.write_report(multirun)
    assert calls[-1]["runs"] == [2, 2] and plots._runs_note(calls[-1]["runs"], 2) == " (mean ± std over 2 seeds)"
    single = tmp_path / "single"
    _write_run(single, ["learner.lr=0.1"], {"acc": 0.5})
    report.write_report(single)
    assert calls[-1]["runs"] == [1] and plots._runs_note([1], 1) == " (one run each)"
