"""``synclearn report DIR``: aggregate one run or a Hydra multirun into tables and a plot.

Layout read (Hydra's output layout):

* a run directory holds ``metrics.json`` (a JSON object: scalar metrics, plus
  optional nested series, which are kept but not tabulated) and ``.hydra/``
  with ``overrides.yaml`` (a list of ``key=value``) and/or ``config.yaml``;
* a multirun directory holds ``multirun.yaml`` and numbered run directories
  ``0/``, ``1/``, ... (found at any depth, ordered numerically).

A run's parameters are its overrides; without ``overrides.yaml`` they are its
flattened ``config.yaml``, keeping only the keys that differ between runs. Runs
are grouped by every parameter except the seed (``seed`` or ``*.seed``) and each
metric is reported as mean ± sample std (ddof=1) over the group's finite values.

Writes into ``--out`` (default DIR): ``report.md`` (printed to stdout too),
``report.csv`` (one row per run), ``report_groups.csv`` (mean and std per group)
and ``report.png`` (bars of the main metrics per group).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from synclearn.eval.metrics import DEFINITIONS

__all__ = ["Group", "Report", "ReportError", "Run", "aggregate", "find_runs", "load_run", "main",
           "render_markdown", "write_report"]

# Plotted by default when present, in this order; otherwise the first four metrics.
MAIN_METRICS = ("acc", "bwt", "fwt", "forgetting", "intransigence", "lca", "online_acc", "half_life")


class ReportError(ValueError):
    """A run directory that cannot be reported on; the message names the file or value."""


@dataclass
class Run:
    """One run: where it is, its parameters, its scalar metrics and its nested series."""

    path: Path
    label: str
    params: dict[str, str]
    params_from: str  # "overrides", "config" or "none"
    metrics: dict[str, float]
    series: dict[str, Any] = field(default_factory=dict)


@dataclass
class Group:
    """Runs that share every parameter except the seed."""

    params: dict[str, str]
    runs: list[Run]
    seeds: list[str]
    mean: dict[str, float]
    std: dict[str, float]
    count: dict[str, int]  # finite values per metric


@dataclass
class Report:
    root: Path
    param_columns: list[str]
    metric_columns: list[str]
    runs: list[Run]
    groups: list[Group]
    sweep: list[str]  # the sweep overrides from multirun.yaml, if any
    missing: list[str]  # run directories (with .hydra/) that have no metrics.json


def _natural_key(path: Path) -> list[tuple[int, int | str]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in path.parts]


def find_runs(root: Path) -> list[Path]:
    """Run directories under ``root`` (``root`` itself if it holds ``metrics.json``), in numeric order."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root} is not a directory; pass a Hydra run or multirun output directory")
    if (root / "metrics.json").is_file():
        return [root]
    found = [p.parent for p in root.rglob("metrics.json") if ".hydra" not in p.parts]
    return sorted(found, key=lambda p: _natural_key(p.relative_to(root)))


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ReportError(f"{path}: not valid YAML ({exc})") from exc


def _parse_override(text: Any, path: Path) -> tuple[str, str]:
    if not isinstance(text, str) or "=" not in text:
        raise ReportError(f"{path}: override {text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    return key.lstrip("+~"), value


def _flatten(cfg: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(cfg, dict):
        out: dict[str, str] = {}
        for k, v in cfg.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: cfg if isinstance(cfg, str) else json.dumps(cfg)}


def _scalar(value: Any) -> float | None:
    if value is None:
        return math.nan
    if isinstance(value, (bool, int, float)):
        return float(value)
    return None


def load_run(run_dir: Path, root: Path | None = None) -> Run:
    """Read one run's ``metrics.json`` and its Hydra overrides (or config)."""
    run_dir = Path(run_dir)
    mpath = run_dir / "metrics.json"
    try:
        raw = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{mpath}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ReportError(f"{mpath}: expected a JSON object of metrics, got {type(raw).__name__}")
    metrics, series = {}, {}
    for k, v in raw.items():
        x = _scalar(v)
        if x is not None:
            metrics[k] = x
        elif isinstance(v, (list, dict)):
            series[k] = v
    hydra = run_dir / ".hydra"
    params: dict[str, str] = {}
    source = "none"
    if (hydra / "overrides.yaml").is_file():
        items = _read_yaml(hydra / "overrides.yaml") or []
        if not isinstance(items, list):
            raise ReportError(f"{hydra / 'overrides.yaml'}: expected a list of key=value, got {items!r}")
        params = dict(_parse_override(o, hydra / "overrides.yaml") for o in items)
        source = "overrides"
    elif (hydra / "config.yaml").is_file():
        params = _flatten(_read_yaml(hydra / "config.yaml") or {})
        source = "config"
    label = str(run_dir.relative_to(root)) if root is not None and run_dir != root else run_dir.name
    return Run(run_dir, label, params, source, metrics, series)


def _is_seed(key: str) -> bool:
    return key == "seed" or key.endswith(".seed")


def aggregate(root: Path, metrics: Sequence[str] | None = None) -> Report:
    """Load every run under ``root`` and group them by their non-seed parameters.

    Args:
        root: a run or multirun directory.
        metrics: metric columns, in order; default every scalar metric found.
    """
    root = Path(root)
    paths = find_runs(root)
    if not paths:
        raise ReportError(f"no metrics.json under {root}; is it a synclearn run or multirun directory?")
    runs = [load_run(p, root) for p in paths]
    have = {p.resolve() for p in paths}
    missing = sorted((str(h.parent.relative_to(root)) for h in root.rglob(".hydra")
                      if h.is_dir() and h.parent.resolve() not in have), key=lambda s: _natural_key(Path(s)))

    found = list(dict.fromkeys(k for r in runs for k in r.metrics))
    if metrics:
        unknown = [m for m in metrics if m not in found]
        if unknown:
            raise ReportError(f"metric(s) {unknown} are in no metrics.json; available: {found}")
        columns = list(metrics)
    else:
        columns = found

    # Overrides always count; a flattened config only where it differs between runs.
    param_columns = list(dict.fromkeys(k for r in runs if r.params_from == "overrides" for k in r.params))
    from_config = [r for r in runs if r.params_from == "config"]
    for k in dict.fromkeys(k for r in from_config for k in r.params):
        if k not in param_columns and len({r.params.get(k) for r in from_config}) > 1:
            param_columns.append(k)
    for r in runs:
        r.params = {k: r.params.get(k, "") for k in param_columns}

    group_keys = [k for k in param_columns if not _is_seed(k)]
    seed_keys = [k for k in param_columns if _is_seed(k)]
    members: dict[tuple[str, ...], list[Run]] = {}
    for r in runs:
        members.setdefault(tuple(r.params[k] for k in group_keys), []).append(r)
    groups = []
    for key, rs in members.items():
        mean, std, count = {}, {}, {}
        for m in columns:
            v = np.array([r.metrics.get(m, math.nan) for r in rs])
            v = v[np.isfinite(v)]
            count[m] = int(v.size)
            mean[m] = float(v.mean()) if v.size else math.nan
            std[m] = float(v.std(ddof=1)) if v.size > 1 else math.nan
        seeds = ["/".join(r.params[k] for k in seed_keys) for r in rs] if seed_keys else []
        groups.append(Group(dict(zip(group_keys, key)), rs, seeds, mean, std, count))

    sweep: list[str] = []
    multirun = next(iter(sorted(root.rglob("multirun.yaml"))), None)
    if multirun is not None:
        cfg = _read_yaml(multirun) or {}
        task = cfg.get("hydra", {}).get("overrides", {}).get("task") if isinstance(cfg, dict) else None
        sweep = [str(t) for t in task] if isinstance(task, list) else []
    return Report(root, param_columns, columns, runs, groups, sweep, missing)


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    a = abs(x)
    if x == int(x) and a < 1e6:
        return str(int(x))  # counts (steps, tokens) read as integers
    if a >= 1e6 or a < 1e-3:
        return f"{x:.3e}"
    return f"{x:.1f}" if a >= 100 else f"{x:.4f}"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def render_markdown(report: Report) -> str:
    """The report as markdown: per-run table, per-group mean ± std, metric definitions."""
    lines = [f"# Report: {report.root}", ""]
    if report.sweep:
        lines += ["Sweep: " + " ".join(f"`{s}`" for s in report.sweep), ""]
    if report.missing:
        lines += [f"Runs without metrics.json (failed or unfinished): {', '.join(report.missing)}", ""]
    cols = report.metric_columns
    lines += [f"## Runs ({len(report.runs)})", ""]
    lines += _md_table(["run", *report.param_columns, *cols],
                       [[r.label, *r.params.values(), *(_fmt(r.metrics[m]) if m in r.metrics else "–" for m in cols)]
                        for r in report.runs])
    group_cols = [k for k in report.param_columns if not _is_seed(k)]
    lines += ["", "## Mean ± std over seeds (sample std, ddof=1)", ""]
    rows = []
    for g in report.groups:
        cells = []
        for m in cols:
            cell = _fmt(g.mean[m]) + ("" if math.isnan(g.std[m]) else f" ± {_fmt(g.std[m])}")
            cells.append(cell + (f" (n={g.count[m]})" if g.count[m] != len(g.runs) else ""))
        rows.append([*g.params.values(), ",".join(g.seeds) or "–", str(len(g.runs)), *cells])
    lines += _md_table([*group_cols, "seeds", "n", *cols], rows)
    defined = [m for m in cols if m in DEFINITIONS]
    if defined:
        lines += ["", "## Definitions", "", *(f"- `{m}`: {DEFINITIONS[m]}" for m in defined)]
    return "\n".join(lines) + "\n"


def _csv_number(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def write_report(root: Path, out: Path | None = None, metrics: Sequence[str] | None = None,
                 plot_metrics: Sequence[str] | None = None) -> tuple[Report, dict[str, Path]]:
    """Aggregate ``root`` and write ``report.md``, ``report.csv``, ``report_groups.csv``, ``report.png``.

    ``plot_metrics`` are the bars of ``report.png`` (default: ``metrics``, else the main ones found).

    Returns:
        The ``Report`` and ``{"md", "csv", "groups_csv", "png"}`` -> written paths.
    """
    from synclearn.eval.plots import plot_metric_bars  # matplotlib only when writing

    report = aggregate(root, metrics)
    out = Path(root if out is None else out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "csv": out / "report.csv", "groups_csv": out / "report_groups.csv",
             "png": out / "report.png"}
    paths["md"].write_text(render_markdown(report))
    cols = report.metric_columns
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", *report.param_columns, *cols])
        for r in report.runs:
            w.writerow([r.label, *r.params.values(), *(_csv_number(r.metrics.get(m)) for m in cols)])
    with paths["groups_csv"].open("w", newline="") as f:
        w = csv.writer(f)
        group_cols = [k for k in report.param_columns if not _is_seed(k)]
        w.writerow([*group_cols, "seeds", "n", *(f"{m}_{s}" for m in cols for s in ("mean", "std"))])
        for g in report.groups:
            stats = [_csv_number(v) for m in cols for v in (g.mean[m], g.std[m])]
            w.writerow([*g.params.values(), ",".join(g.seeds), len(g.runs), *stats])
    main_metrics = list(plot_metrics or metrics or [m for m in MAIN_METRICS if m in cols] or cols[:4])
    varying = [k for k in (report.groups[0].params if report.groups else {})
               if len({g.params[k] for g in report.groups}) > 1]  # constant overrides add nothing to a label
    labels = [" ".join(f"{k}={g.params[k]}" for k in varying) or "all runs" for g in report.groups]
    if main_metrics:
        plot_metric_bars(labels, {m: [g.mean[m] for g in report.groups] for m in main_metrics}, paths["png"],
                         stds={m: [g.std[m] for g in report.groups] for m in main_metrics},
                         runs=[len(g.runs) for g in report.groups])
    else:
        del paths["png"]
    return report, paths


def main(argv: list[str] | None = None) -> int:
    """``synclearn report DIR [--metrics acc bwt ...] [--out OUT]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="synclearn report", description=__doc__.split("\n")[0])
    parser.add_argument("dir", type=Path, help="a Hydra run or multirun output directory")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help="metric columns, in order (space- or comma-separated); default: all scalars")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: DIR)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    metrics = [m for item in args.metrics for m in re.split(r"[,\s]+", item) if m] if args.metrics else None
    try:
        _, paths = write_report(args.dir, args.out, metrics)
    except ReportError as exc:
        print(f"synclearn report: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(paths["md"].read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
