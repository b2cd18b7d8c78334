"""Benchmark the interaction log: append throughput and replay sampling latency.

Usage:
    python experiments/bench_log.py                      # quick: 10^4 rows
    python experiments/bench_log.py --rows 100000 1000000 --out experiments/out/bench_log.json

Measures (prints a table, writes JSON):
* append rows/s, one committed transaction per ``append`` (the serving path),
  with ``synchronous=NORMAL`` and ``FULL``;
* at each log size: bulk build rate (``append_many``), a cold load of the replay
  candidates (``fresh=True``), each policy's draw on loaded candidates, a training
  loop's ``ReplayBatchBuilder.next_batch`` (incremental candidate refresh, draw,
  texts) and ``commit``, a full-text search, and a one-row ``delete`` (which
  merges the whole full-text index and truncates the WAL).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from synclearn.memory import (
    InteractionLog,
    LossPrioritized,
    RecencyWeighted,
    ReplayBatchBuilder,
    Reservoir,
    RetentionAware,
    uniform,
)

WORDS = [f"w{i}" for i in range(2000)]


def _text(rnd: random.Random, n_words: int) -> str:
    return " ".join(rnd.choices(WORDS, k=n_words))


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bench_append(tmp: Path, synchronous: str, rows: int) -> dict:
    rnd = random.Random(0)
    texts = [(_text(rnd, 30), _text(rnd, 60)) for _ in range(rows)]
    with InteractionLog(tmp / f"append_{synchronous}.db", synchronous=synchronous) as log:
        t0 = time.perf_counter()
        for i, (p, r) in enumerate(texts):
            log.append(session_id=f"s{i % 50}", prompt=p, response=r, tokens=90)
        dt = time.perf_counter() - t0
    return {"synchronous": synchronous, "rows": rows, "rows_per_s": rows / dt, "ms_per_append": dt / rows * 1000}


def bench_size(tmp: Path, n: int, k: int, repeats: int) -> dict:
    rnd, path = random.Random(n), tmp / f"sample_{n}.db"
    out: dict = {"rows": n}
    with InteractionLog(path) as log:
        t0 = time.perf_counter()
        for start in range(0, n, 10_000):
            m = min(10_000, n - start)
            log.append_many(
                dict(session_id=f"s{(start + i) % 1000}", prompt=_text(rnd, 10), response=_text(rnd, 20),
                     created_at=1e9 + start + i, loss=rnd.random() * 3)
                for i in range(m)
            )  # fmt: skip
            log.mark_learned(range(start + 1, start + m + 1), now=1e9 + start + m)
        out["build_rows_per_s"] = n / (time.perf_counter() - t0)
        now = 1e9 + n + 3600
        out["load_candidates_cold_ms"] = _median_ms(lambda: log.replay_candidates(fresh=True), repeats)
        cands = log.replay_candidates()
        policies = {
            "uniform": uniform, "reservoir": Reservoir(10_000), "recency": RecencyWeighted(3600.0),
            "loss": LossPrioritized(), "retention": RetentionAware(),
        }  # fmt: skip
        rng = np.random.default_rng(0)
        for name, policy in policies.items():
            policy(cands, k, rng, now)  # warm-up (the reservoir's first call ingests every row)
            out[f"policy_{name}_ms"] = _median_ms(lambda p=policy: p(cands, k, rng, now), repeats)
        # A training loop: next_batch (incremental candidate refresh + draw + texts), then commit.
        builder = ReplayBatchBuilder(log, RetentionAware(), replay_ratio=0.5, batch_size=2 * k)
        log.append_many(dict(session_id="new", prompt=_text(rnd, 10), response="r") for _ in range(k * repeats))
        batch_ms, commit_ms = [], []
        for step in range(repeats):
            t0 = time.perf_counter()
            batch = builder.next_batch(now=now + step)
            t1 = time.perf_counter()
            builder.commit(batch, losses=[1.0] * len(batch), now=now + step)
            batch_ms.append((t1 - t0) * 1000)
            commit_ms.append((time.perf_counter() - t1) * 1000)
        out["next_batch_ms"], out["commit_ms"] = statistics.median(batch_ms), statistics.median(commit_ms)
        out["search_ms"] = _median_ms(lambda: log.search("w17 w18", limit=20), repeats)
        victims = iter(range(1, n + 1))
        out["delete_one_ms"] = _median_ms(lambda: log.delete(ids=[next(victims)], reason="bench"), min(repeats, 3))
    out["db_mib"] = os.path.getsize(path) / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000], help="log sizes for the sampling benchmark")
    ap.add_argument("--append-rows", type=int, nargs=2, default=[3000, 300], metavar=("NORMAL", "FULL"),
                    help="appends timed with synchronous=NORMAL and FULL")  # fmt: skip
    ap.add_argument("--k", type=int, default=32, help="replayed rows per draw (batch = 2k)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--dir", default=None, help="where the scratch databases go (default: a temp dir)")
    ap.add_argument("--out", default="experiments/out/bench_log.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        tmp = Path(d)
        appends = [bench_append(tmp, s, r) for s, r in zip(("NORMAL", "FULL"), args.append_rows)]
        print(f"{'synchronous':>12} {'rows':>8} {'rows/s':>10} {'ms/append':>10}")
        for a in appends:
            print(f"{a['synchronous']:>12} {a['rows']:>8} {a['rows_per_s']:>10.0f} {a['ms_per_append']:>10.3f}")
        sizes = []
        for n in args.rows:
            sizes.append(bench_size(tmp, n, args.k, args.repeats))
            (tmp / f"sample_{n}.db").unlink()
    keys = [k for k in sizes[0] if k != "rows"]
    print(f"\nsampling (median ms over {args.repeats} runs; k={args.k}, batch={2 * args.k})")
    print(f"{'metric':>24} " + " ".join(f"{s['rows']:>12}" for s in sizes))
    for key in keys:
        print(f"{key:>24} " + " ".join(f"{s[key]:>12.2f}" for s in sizes))

    report = {
        "append": appends, "sampling": sizes, "k": args.k, "repeats": args.repeats,
        "sqlite": sqlite3.sqlite_version, "python": platform.python_version(), "cpus": os.cpu_count(),
        "machine": platform.machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
