"""Regenerate experiments/RESULTS.md: the sweeps of every benchmark, their tables and plots.

    python experiments/results.py                      # everything (about an hour on 2 cores)
    python experiments/results.py --only split_digits  # one sweep; the other sections are kept
    python experiments/results.py --seeds 0            # fewer seeds (a quicker, noisier table)
    python experiments/results.py --render-only        # rebuild RESULTS.md from experiments/results/
    python experiments/results.py --jobs 1             # one run at a time (the default runs in parallel)

Each sweep is a real ``synclearn run -m ...`` (a Hydra multirun) into
``experiments/out/results/<sweep>/`` (gitignored: logs, checkpoints, per-run plots), then
``synclearn report`` on it. What is committed goes to ``experiments/results/``: per sweep the
report's tables (``<sweep>.md``, ``<sweep>.csv``, ``<sweep>_groups.csv``), its bar plot and
the plots of one representative run; and ``experiments/RESULTS.md``, which is assembled from
every sweep found in ``experiments/results/`` and checks the goals against the measured means.

Sweeps (learner x memory, as the issue asks: ``learner=sparse,lora,full memory=none,replay,consolidate``):

* ``chat_facts``: the main job (conf/config.yaml: 40 facts, probes up to 1000 later
  interactions) with the sparse learner: naive vs replay + consolidation vs replay + anchors,
  seeds 0-2, with what else moved (held-out text and chat NLL, answer format, locality, free
  neurons) beside what was learned (about 15-30 minutes a run on 2 cores).
* ``main_job``: the main job on its defaults (``synclearn run``), seeds 0-2.
* ``main_job_lock``: the main job without anchors (``memory=consolidate``, the default until
  2026-12-02), seeds 0-2.
* ``chat_facts_quick``: every learner x memory on experiment=quick (20 facts, delays up to 200).
* ``main_job_world200``: the main job on a base pretrained with a 200-fact world at 70% of
  the fact questions (``model.n_world=200 model.world_share=0.7``), seeds 0-2;
  ``main_job_world200_gated``: the same with ``model.overrides={gated_decay:true}``.
* ``main_job_damp``: the main job with ``memory=damp`` (damping instead of locks) at 10% of the
  neurons a step, seeds 0-2.
* ``split_digits``: class-incremental split digits (experiment=split_digits), seeds 0-2;
  ``split_digits_anchors``: the sparse learner with logit replay there (memory=anchors).
* ``text_domains``: domain-incremental language modelling (experiment=text_domains), seeds 0-2.

The runs of a sweep go through Hydra's joblib launcher (``hydra/launcher=local``), as many at
once as the cores allow: a run's ``cores_per_job`` below is what it keeps busy (chat-facts: the
serving thread and the learner's thread, 2; the others: 1), so on 2 cores the chat-facts runs
still go one at a time (their latency figures would otherwise measure the neighbours) and the
split-digits and text-domains runs two at a time. ``--jobs N`` fixes N for every sweep.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from synclearn.eval.report import write_report

GRID = ["learner=sparse,lora,full", "memory=none,replay,consolidate"]
# what the sweeps of the main job (40 facts, delays up to 1000) report: both sides
MAIN_JOB_METRICS = ["recall_d0", "recall_d10", "recall_d100", "recall_d1000", "recall_other_d0", "recall_other_d1000", "rank_recall_d1000",
                    "acc", "bwt", "forgetting", "text_nll_change", "chat_nll_change", "people_nll_change",
                    "untaught_entropy_vs_base", "format_vs_base", "locality",
                    "free_share_min", "learning_share_min", "latency_overhead_p50", "learner_steps", "stream_s"]
MAIN_JOB_PLOTS = ["retention.png", "accuracy_matrix.png", "forgetting.png", "latency.png"]


def _main_job_sweep(grid: list[str], title: str, representative: dict[str, str],
                    columns: list[str] | None = None) -> dict:
    """A sweep of the main job (its metrics and plots, one run at a time on 2 cores)."""
    spec = {"grid": grid, "overrides": [], "metrics": MAIN_JOB_METRICS, "title": title, "plots": MAIN_JOB_PLOTS,
            "representative": representative, "cores_per_job": 2}
    return spec | ({"columns": columns} if columns is not None else {})


SWEEPS: dict[str, dict] = {
    "chat_facts": _main_job_sweep(
        ["learner=sparse", "memory=none,consolidate,anchors"],
        "chat-facts, the main job (conf/config.yaml: 40 facts, probes up to 1000 later interactions)",
        {"memory": "consolidate"}),
    "main_job": _main_job_sweep(
        [], "chat-facts, the main job on its defaults (`synclearn run`)", {"seed": "0"}, []),
    "main_job_lock": _main_job_sweep(
        ["memory=consolidate"], "chat-facts, the main job without anchors (memory=consolidate: the default until "
        "2026-12-02)", {"seed": "0"}, []),
    "main_job_world200": _main_job_sweep(
        ["model.n_world=200", "model.world_share=0.7"],
        "chat-facts, the main job on a base pretrained with a 200-fact world (model.n_world=200 model.world_share=0.7)",
        {"seed": "0"}, ["model.n_world", "model.world_share"]),
    "main_job_world200_gated": _main_job_sweep(
        ["model.n_world=200", "model.world_share=0.7", "model.overrides={gated_decay:true}"],
        "chat-facts, the main job on that base with a gated decay section (model.overrides={gated_decay:true})",
        {"seed": "0"}, ["model.n_world", "model.world_share", "model.overrides"]),
    "main_job_damp": _main_job_sweep(
        ["memory.consolidation.policy=damp", "learner.neuron_fraction=0.1"],
        "chat-facts, the main job with damping instead of locks (memory=damp, 10% of the neurons a step)",
        {"seed": "0"}, ["memory.consolidation.policy", "learner.neuron_fraction"]),
    "chat_facts_quick": {
        "grid": GRID,
        "overrides": ["experiment=quick"],
        "metrics": ["recall_d0", "recall_d10", "recall_d50", "recall_d200", "rank_recall_d200", "acc", "bwt",
                    "forgetting", "latency_overhead_p50", "learner_steps", "stream_s"],
        "title": "chat-facts, every learner x memory (experiment=quick: 20 facts, probes up to 200 later "
                 "interactions)",
        "plots": [],
        "representative": {"learner": "sparse", "memory": "consolidate"},
        "cores_per_job": 2,
    },
    "split_digits": {
        "grid": GRID,
        "overrides": ["experiment=split_digits"],
        "metrics": ["acc", "bwt", "forgetting", "fwt", "lr", "steps", "seconds"],
        "title": "split-digits, class-incremental (5 tasks of 2 classes; reservoir buffer of 200)",
        "plots": [],
        "representative": {"learner": "sparse", "memory": "consolidate"},
    },
    "split_digits_anchors": {
        "grid": ["learner=sparse", "memory=anchors"],
        "overrides": ["experiment=split_digits"],
        "metrics": ["acc", "bwt", "forgetting", "fwt", "lr", "steps", "seconds"],
        "title": "split-digits, the sparse learner with logit replay (memory=anchors: DER++, tuned on seeds 100-104)",
        "plots": [],
        "representative": {"learner": "sparse", "memory": "anchors"},
    },
    "text_domains": {
        "grid": GRID,
        "overrides": ["experiment=text_domains"],
        "metrics": ["acc", "bwt", "forgetting", "fwt", "nll", "nll_bwt", "lr", "steps", "seconds"],
        "title": "text-domains: domain-incremental language modelling (next-byte accuracy per domain)",
        "plots": [],
        "representative": {"learner": "sparse", "memory": "consolidate"},
    },
}


def parallel_jobs(name: str, jobs: int | None = None) -> int:
    """Runs of sweep ``name`` at once: ``jobs``, else the cores over the sweep's ``cores_per_job``."""
    if jobs is not None:
        return max(1, jobs)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // SWEEPS[name].get("cores_per_job", 1))


def launcher_overrides(jobs: int) -> list[str]:
    """Hydra overrides that run ``jobs`` runs at once (none for one: the sequential launcher)."""
    return [] if jobs <= 1 else ["hydra/launcher=local", f"hydra.launcher.n_jobs={jobs}"]


def run_sweep(name: str, seeds: list[int], raw: Path, extra: list[str], jobs: int | None = None) -> Path:
    """One Hydra multirun of ``name`` into ``raw/name`` (replaced), ``jobs`` runs at once
    (:func:`parallel_jobs`); returns the directory."""
    out = raw / name
    if out.exists():
        shutil.rmtree(out)
    jobs = parallel_jobs(name, jobs)
    cmd = [sys.executable, "-m", "synclearn.run", "-m", *SWEEPS[name]["overrides"], *SWEEPS[name]["grid"],
           "seed=" + ",".join(map(str, seeds)), "progress=false", f"hydra.sweep.dir={out}",
           *launcher_overrides(jobs), *extra]
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(cmd[2:])}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    (out / "sweep_seconds.txt").write_text(f"{time.perf_counter() - t0:.0f}\n")
    (out / "sweep_jobs.txt").write_text(f"{jobs}\n")
    return out


def collect(name: str, raw: Path, dest: Path) -> None:
    """The report of ``raw/name`` and the representative run's plots, copied into ``dest``."""
    spec, src = SWEEPS[name], raw / name
    found = {key for path in src.glob("*/metrics.json") for key in json.loads(path.read_text())}
    metrics = [m for m in spec["metrics"] if m in found]
    plotted = [m for m in metrics if m.startswith(("recall_d", "acc", "bwt", "forgetting", "fwt"))]
    report, paths = write_report(src, src / "report", metrics=metrics, plot_metrics=plotted)
    dest.mkdir(parents=True, exist_ok=True)
    for key, suffix in (("md", ".md"), ("csv", ".csv"), ("groups_csv", "_groups.csv"), ("png", ".png")):
        if key in paths:
            shutil.copy(paths[key], dest / f"{name}{suffix}")
    rep = _representative(report, spec["representative"])
    if rep is not None:
        for png in spec["plots"]:
            if (rep.path / png).is_file():
                shutil.copy(rep.path / png, dest / f"{name}_{png}")
    seeds = sorted({s for g in report.groups for s in g.seeds}, key=int)
    # runs made one at a time (not by one multirun) record no sweep: name the multirun they equal
    sweep = report.sweep or [*spec["overrides"], *spec["grid"], "seed=" + ",".join(seeds), "progress=false"]
    meta = {"sweep": sweep, "single_runs": not report.sweep, "runs": len(report.runs), "seconds": _read_float(src / "sweep_seconds.txt"),
            "jobs": _read_float(src / "sweep_jobs.txt"),
            "representative": str(rep.path.relative_to(src)) if rep is not None else None,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d")}
    (dest / f"{name}.json").write_text(json.dumps(meta, indent=2))


def _read_float(path: Path) -> float | None:
    return float(path.read_text()) if path.is_file() else None


def _representative(report, want: dict[str, str]):
    for run in report.runs:
        if all(run.params.get(k) == v for k, v in want.items()):
            return run
    return report.runs[0] if report.runs else None


def _groups(dest: Path, name: str) -> list[dict[str, str]]:
    path = dest / f"{name}_groups.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _mean(groups: list[dict[str, str]], metric: str, **params: str) -> float:
    for g in groups:
        if all(g.get(k) == v for k, v in params.items()):
            value = g.get(f"{metric}_mean", "")
            return float(value) if value else math.nan
    return math.nan


def _cell(g: dict[str, str], metric: str) -> str:
    mean, std = g.get(f"{metric}_mean", ""), g.get(f"{metric}_std", "")
    if not mean:
        return "–"
    m, s = float(mean), float(std) if std else math.nan
    m = 0.0 if abs(m) < 1e-12 else m  # float noise of a difference that is zero

    def fmt(x: float) -> str:
        return f"{x:.0f}" if abs(m) >= 100 else f"{x:.3f}" if abs(m) >= 0.01 or x == 0 else f"{x:.1e}"

    if math.isfinite(s) and s < 1e-9 * max(1.0, abs(m)):
        s = 0.0  # a setting, equal in every run (float noise aside)
    return fmt(m) + (f" ± {fmt(s)}" if math.isfinite(s) else "")


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


GOAL_METRICS = ("recall_d1000", "recall_other_d1000", "bwt", "text_nll_change", "chat_nll_change", "format_vs_base",
                "learning_share_min",
                "free_share_min")


def _goal_lines(label: str, m: dict[str, float], learned_tail: str = "") -> list[str]:
    """The two goal lines of a chat-facts setting: what was learned, and what else moved."""
    return [f"- {label}: recall@1000 **{m['recall_d1000']:.0%}** (goal >= 95%: {_met(m['recall_d1000'] >= 0.95)}), "
            f"asked in other words **{m['recall_other_d1000']:.0%}** (goal >= 90%: "
            f"{_met(m['recall_other_d1000'] >= 0.9)}), BWT **{100 * m['bwt']:+.1f} points** (goal >= -2: "
            f"{_met(m['bwt'] >= -0.02)}){learned_tail}.",
            f"- base retention ({label}): held-out text NLL **{100 * m['text_nll_change']:+.1f}%**, chat NLL "
            f"**{100 * m['chat_nll_change']:+.1f}%** (goal within +2%: "
            f"{_met(max(m['text_nll_change'], m['chat_nll_change']) <= 0.02)}), well-formed answers "
            f"**{m['format_vs_base']:.2f}x** the base's (goal >= 0.95: {_met(m['format_vs_base'] >= 0.95)}), "
            f"neurons free in the least free layer **{m['free_share_min']:.0%}** (goal >= 50%: "
            f"{_met(m['free_share_min'] >= 0.5)}){_learning_tail(m)}."]


def _learning_tail(m: dict[str, float]) -> str:
    """How many free neurons still learn at >= half the rate (damping frees every neuron)."""
    share = m.get("learning_share_min")
    return "" if share is None or share != share else f", of them at >= half the learning rate **{share:.0%}**"


def goals(dest: Path) -> list[str]:
    """The issue's goals, checked against the measured means."""
    lines = []
    chat = _groups(dest, "chat_facts")
    if chat:
        naive = _mean(chat, "recall_d1000", learner="sparse", memory="none")
        for memory in ("consolidate", "anchors"):
            if not any(g.get("memory") == memory for g in chat):
                continue
            m = {k: _mean(chat, k, learner="sparse", memory=memory) for k in GOAL_METRICS}
            if any(v != v for v in m.values()):  # a sweep from before these figures existed
                lines.append(f"- chat-facts (memory={memory}): recall@1000 **{m['recall_d1000']:.0%}**, BWT "
                             f"**{100 * m['bwt']:+.1f} points**; the sweep predates the paraphrase and base-retention "
                             "figures (regenerate it to check those goals).")
                continue
            lines += _goal_lines(f"chat-facts, learner=sparse memory={memory}", m,
                                 f"; naive fine-tuning (memory=none) recall@1000 {naive:.0%}")
    for name, label in (("main_job", "the main job on its defaults, `synclearn run`"),
                        ("main_job_world200", "the main job on a base with a 200-fact world (model.n_world=200 "
                                              "model.world_share=0.7)"),
                        ("main_job_world200_gated", "the main job on that base with gated_decay"),
                        ("main_job_lock", "the main job without anchors (memory=consolidate)"),
                        ("main_job_damp", "the main job with damping instead of locks (memory=damp, 10% of the neurons)")):
        groups = _groups(dest, name)
        if groups:
            m = {k: _mean(groups, k) for k in GOAL_METRICS}
            lines += _goal_lines(f"{label}, seeds {groups[0].get('seeds', '')}", m)
    digits = _groups(dest, "split_digits")
    if digits:
        cons = _mean(digits, "acc", learner="sparse", memory="consolidate")
        rep = _mean(digits, "acc", learner="sparse", memory="replay")
        lines.append(f"- split-digits class-incremental ACC, consolidation {cons:.3f} vs plain replay (same buffer) "
                     f"{rep:.3f} (goal: at least replay: {_met(cons >= rep)}).")
    der = _groups(dest, "split_digits_anchors")
    if der:
        acc = _mean(der, "acc", learner="sparse", memory="anchors")
        lines.append(f"- split-digits class-incremental ACC (buffer 200) of the default sparse learner with logit replay "
                     f"(memory=anchors), seeds {der[0].get('seeds', '')}: **{acc:.3f}** (goal >= 0.92: {_met(acc >= 0.92)}).")
    return lines


def learn_keep_section(dest: Path) -> list[str]:
    """The learn-vs-keep table (experiments/bench_learn_keep.py, written under ``dest/learn_keep/``)."""
    path = dest / "learn_keep" / "learn_keep.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    a = data["args"]
    out = ["## Learn vs keep at matched learning effort", "",
           f"`python experiments/bench_learn_keep.py` on the chat base ({a.get('facts')} facts, each taught in "
           f"{a.get('repeats')} steps with {a.get('replay')} earlier facts replayed, {a.get('neuron_fraction')} of the "
           "neurons for sparse, 0.25 at lr 1e-3 for the `-25` methods, the default learner's); parts merged "
           "with `--merge`. Recall (exact, teaching question / other question forms) against what else moved, "
           "on the final weights vs the base; mean ± std over seeds.", "",
           "| method | lr x | seeds | recall | other forms | text NLL | chat NLL | format vs base | locality |",
           "|---|---|---|---|---|---|---|---|---|"]

    def pm(s: dict, k: str, scale: float = 100, signed: bool = False) -> str:
        return f"{scale * s[k]:{'+' if signed else ''}.1f} ± {scale * s[k + '_std']:.1f}"

    for s in data["summary"]:
        out.append(f"| {s['method']} | {s['lr_scale']:g} | {s['seeds']} | {pm(s, 'recall_same')}% | "
                   f"{pm(s, 'recall_other')}% | {pm(s, 'text_nll_change', signed=True)}% | "
                   f"{pm(s, 'chat_nll_change', signed=True)}% | {s['format_vs_base']:.2f} | {100 * s['locality']:.0f}% |")
    return out + ["", "![learn vs keep](results/learn_keep/learn_keep.png)", ""]


def base_section(dest: Path) -> list[str]:
    """Base variants side by side (experiments/bench_base.py's JSON, one file per pretraining mix,
    copied to ``<dest>/bench_base/``)."""
    paths = sorted((dest / "bench_base").glob("*.json"))
    if not paths:
        return []
    out = ["## Base variants (what the chat base knows before learning)", "",
           "`python experiments/bench_base.py [--base-mix ...]`: `mcsd-chat` pretrained with some settings changed "
           "(1200 steps), per variant: ranked recall of 200 facts of its pretraining world (first question form / "
           "the others), in-context recall (2-3 facts stated, one asked), held-out NLL (nats per token: a byte "
           "for MCSD) of the retention probe's text and chat turns; chance is 1 / the values of the asked attribute.", ""]
    for path in paths:
        data = json.loads(path.read_text())
        mix = " ".join(f"{k}={json.dumps(v)}" for k, v in data.get("base_mix", {}).items()) or "the default mix"
        out += [f"Mix: {mix}.", "",
                "| variant | settings | parameters | pretraining loss | world recall | other forms | chance | in-context "
                "recall | text NLL | chat NLL |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in data["rows"]:
            out.append(f"| {r['variant']} | `{json.dumps(r['settings'])}` | {r['parameters']:,} | {r['pretrain_loss']:.3f} | "
                       f"{r['world_recall']:.1%} | {r['world_recall_other']:.1%} | {r['world_chance']:.1%} | "
                       f"{r['in_context_recall']:.1%} | {r['text_nll']:.3f} | {r['chat_nll']:.3f} |")
        out.append("")
    return out


def sparse_section(dest: Path) -> list[str]:
    """Sparse decode and the sparse step on CPU: ``experiments/bench_sparse.py``'s JSON, copied to
    ``<dest>/bench_sparse.json`` (a wall-clock benchmark: re-run it on a quiet machine)."""
    path = dest / "bench_sparse.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    env = data.get("environment", {})
    out = ["## Sparse decode and the sparse learning step (CPU, batch 1)", "",
           f"`{data['command']}` ({env.get('threads')} thread, torch {env.get('torch')}, load average "
           f"{env.get('loadavg_start', [0])[0]:.2f} at the start). `bound`: the weight elements a dense token "
           "reads over those a sparse one reads (decode), or Llama's matmul flops per trained token over "
           "MCSD's (training): the most that side can gain when both run at one rate.", "",
           "| part | model | side | context | value | unit | ratio | bound |", "|---|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        value = f"{r['value']:,.0f}" if abs(r["value"]) >= 100 else f"{r['value']:.3f}"
        bound = f"{r['bound']:.2f}x" if "bound" in r else ""
        out.append(f"| {r['part']} | {r['model']} | {r['side']} | {r['context']} | {value} | {r['unit']} | "
                   f"{r['ratio']:.2f}x | {bound} |")
    step = [r for r in data["results"] if "bitwise_equal" in r]
    if step:
        out += ["", "The sparse step's forms: selections, loss and gradients bitwise equal to the first form's: "
                + ", ".join(f"{r['side']} {'yes' if r['bitwise_equal'] else 'NO'}" for r in step) + "."]
    out += ["", "Goals: " + "; ".join(f"{k} {g['value']:.2f} (target {g['target']}: {_met(g['met'])})"
                                     for k, g in data.get("goals", {}).items()) + ".", ""]
    return out


def gpu_section(dest: Path) -> list[str]:
    """Figures from one H200 run of ``bash experiments/gpu_check.sh``, kept in ``<dest>/gpu/``
    (CI has no GPU: these are re-measured only where one is lent)."""
    gpu = dest / "gpu"
    if not gpu.is_dir():
        return []

    def load(name: str) -> dict:
        path = gpu / name
        return json.loads(path.read_text()) if path.is_file() else {}

    out = ["## On a GPU (one NVIDIA H200)", "",
           "Measured with `bash experiments/gpu_check.sh` (CUDA tests and benchmarks, ~4 minutes; the JSON files "
           "are in `experiments/results/gpu/`). CI has no GPU, so these are not regenerated by this script.", ""]
    tests = gpu / "h200_gpu_tests.xml"
    if tests.is_file():
        import re

        head = tests.read_text()[:2000]
        m = re.search(r'failures="(\d+)".*?tests="(\d+)"', head)
        if m:
            failed, total = int(m.group(1)), int(m.group(2))
            out += [f"- `pytest -m gpu tests/gpu`: {total - failed} of {total} passed on the H200 (CUDA vs CPU "
                    "references for the MCSD forms, the three learners, serving with the learner attached on its "
                    "own stream, Fabric bf16-mixed pretraining, the HF Llama adapter)."]
    if (gpu / "notes.md").is_file():
        out += ["", (gpu / "notes.md").read_text().strip()]
    decode = load("h200_bench_decode.json")
    if decode:
        rows = [r for r in decode["results"] if r["metric"] in ("decode", "train") and "sparse" not in r["model"]]
        out += ["", "| model | metric | context | batch | tok/s | MCSD / Transformer |", "|---|---|---|---|---|---|"]
        for r in rows:
            ratio = f"{r['ratio']:.2f}x" if isinstance(r.get("ratio"), (int, float)) else ""
            out.append(f"| {r['model']} | {r['metric']} | {r['context']} | {r['batch']} | {r['value']:,.0f} | {ratio} |")
    for name, label in (("h200_serve_learn.json", "learner yields to serving (default governor)"),
                        ("h200_serve_learn_concurrent.json", "learner runs concurrently (idle_only=False)")):
        d = load(name)
        if d:
            att = [r for r in d["results"] if r["mode"] == "attached"]
            parts = [f"load {r['load']:.2f}: per-token p50 {r['p50_ratio']:.2f}x / p99 {r['p99_ratio']:.2f}x of "
                     f"detached, learner at {r['learn_vs_alone']:.0%} of its standalone {d['learner_alone_steps_s']:.1f} "
                     "steps/s" for r in att]
            out += ["", f"- serving while learning, mcsd-small, {label}: " + "; ".join(parts) + "."]
    d = load("h200_scale_1b.json")
    if d:
        inf, sp = d["results"][0], d["results"][1]
        out += [f"- mcsd-1b (1.02B) bf16 sparse learning: peak GPU memory {sp['peak_gpu_mb']:,.0f} MB vs "
                f"{inf['peak_gpu_mb']:,.0f} MB for inference ({sp['peak_gpu_mb'] / inf['peak_gpu_mb']:.2f}x), "
                f"{1 / sp['s_per_step']:.1f} steps/s of {sp['batch_tokens']} tokens, loss {sp['loss_first']:.2f} -> "
                f"{sp['loss_last']:.2f} in 3 steps."]
    return out + [""]


def render(dest: Path) -> str:
    """RESULTS.md from what ``dest`` holds."""
    out = ["# synclearn results", "",
           "Regenerated by one command: `python experiments/results.py` (see its docstring; about an hour on 2 "
           "cores). Every number below is a mean ± sample std over seeds of real runs "
           "(`synclearn run -m ... learner=sparse,lora,full memory=none,replay,consolidate seed=...`), "
           "aggregated by `synclearn report`; the per-run tables are in `experiments/results/<sweep>.md`.", "",
           "## Goals", "", *goals(dest), ""]
    for name, spec in SWEEPS.items():
        groups = _groups(dest, name)
        if not groups:
            continue
        meta = json.loads((dest / f"{name}.json").read_text()) if (dest / f"{name}.json").is_file() else {}
        metrics = [m for m in spec["metrics"] if f"{m}_mean" in groups[0]]
        out += [f"## {spec['title']}", ""]
        if meta.get("sweep"):
            took = f", {meta['seconds'] / 60:.0f} min" if meta.get("seconds") else ""
            took += f", {meta['jobs']:.0f} at a time" if (meta.get("jobs") or 1) > 1 else ""
            how = "Single runs equal to the sweep" if meta.get("single_runs") else "Sweep"
            out += [f"{how}: `synclearn run -m {' '.join(meta['sweep'])}` ({meta['runs']} runs{took}; "
                    f"{meta.get('machine', '')}, {meta.get('date', '')}).", ""]
        columns = spec.get("columns", ["learner", "memory"])  # the grid's settings
        header = [*columns, "seeds", *metrics]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for g in groups:
            out.append("| " + " | ".join([*(g.get(c, "") for c in columns), g.get("seeds", ""),
                                          *(_cell(g, m) for m in metrics)]) + " |")
        out += ["", f"![{name}: main metrics per learner x memory](results/{name}.png)", ""]
        for png in spec["plots"]:
            if (dest / f"{name}_{png}").is_file():
                out.append(f"![{name} {png[:-4]}](results/{name}_{png})")
        if spec["plots"]:
            out += ["", f"(plots of one run: {meta.get('representative', '')}, "
                        f"{' '.join(f'{k}={v}' for k, v in spec['representative'].items())})", ""]
    out += learn_keep_section(dest)
    out += base_section(dest)
    out += sparse_section(dest)
    out += gpu_section(dest)
    out += ["## Definitions", "",
            "ACC = mean final accuracy over tasks; BWT = mean change of a task's accuracy from just after it was "
            "learned to the end (Lopez-Paz & Ranzato 2017); forgetting = mean over tasks of the best earlier "
            "accuracy minus the final one (Chaudhry et al. 2018); FWT = accuracy on a task before learning it, "
            "minus the untrained model's. chat-facts: recall_dK = share of facts whose greedy answer in a fresh "
            "conversation is exactly the taught sentence K interactions after teaching; rank_recall = the true "
            "value ranks first among its attribute's 10 values; the accuracy matrix's tasks are fact groups. "
            "Full definitions: `synclearn/eval/metrics.py`.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", choices=list(SWEEPS), default=list(SWEEPS))
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="default: 0 1 2, and 0 for the chat-facts sweeps (minutes per run)")
    ap.add_argument("--raw", type=Path, default=ROOT / "experiments" / "out" / "results")
    ap.add_argument("--dest", type=Path, default=ROOT / "experiments" / "results")
    ap.add_argument("--render-only", action="store_true", help="rebuild RESULTS.md from experiments/results/")
    ap.add_argument("--collect-only", action="store_true",
                    help="re-read the sweeps already in --raw (no new runs), then rebuild RESULTS.md")
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every sweep")
    ap.add_argument("--jobs", type=int, default=None,
                    help="runs at once for every sweep (default: the cores over the sweep's cores_per_job)")
    args = ap.parse_args(argv)
    if not args.render_only:
        for name in args.only:
            if not args.collect_only:
                seeds = args.seeds or ([0] if name == "chat_facts_quick" else [0, 1, 2])
                run_sweep(name, seeds, args.raw, args.override, jobs=args.jobs)
            collect(name, args.raw, args.dest)
    text = render(args.dest)
    (args.dest.parent / "RESULTS.md").write_text(text)  # links point into <dest>/
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
