"""Shared plumbing for the benchmarks: tables, JSON results, and child processes for peak RSS.

Peak resident memory is a per-process high-water mark, so each configuration whose memory
is compared runs in a fresh child process (``run_child``) that prints one JSON line.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import torch


def peak_rss_mb() -> float:
    """This process's peak resident set size, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment() -> dict[str, Any]:
    return {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "machine": platform.machine()}


def run_child(script: str, args: Sequence[str], timeout: float = 3600) -> dict[str, Any]:
    """Run ``python script --child args...``; its last stdout line is a JSON object."""
    proc = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """Aligned plain-text table of ``rows`` (dicts) over ``columns``."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:  # the first column names the row: left-aligned; figures right-aligned
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def parse_settings(items: list[str], flag: str, known: list[str], check=None) -> dict:
    """``["n_world=200", "world_share=0.7"]`` -> ``{"n_world": 200, "world_share": 0.7}``: KEY=VALUE
    pairs, each value read as JSON (a number, true/false, an object) or else kept as a string;
    a key outside ``known`` or what ``check(settings)`` reports ends the run with one line."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"{flag} {item!r}: expected KEY=VALUE with KEY one of {sorted(known)}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    errors = check(out) if check is not None else []
    if errors:
        raise SystemExit(f"{flag}: " + "; ".join(errors))
    return out


def parse_pretrain_settings(items: list[str], flag: str) -> dict:
    """:func:`parse_settings` over the :class:`~synclearn.learn.pretrain.PretrainConfig` fields a
    base variant may change (all but ``name``), e.g. ``["n_world=200", "world_share=0.7"]``."""
    from dataclasses import fields

    from synclearn.learn.pretrain import PretrainConfig

    return parse_settings(items, flag, [f.name for f in fields(PretrainConfig) if f.name != "name"])
