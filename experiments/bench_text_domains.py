"""Text domains side by side: every method learns the domain stream, over seeds (issue 8).

For each method the domain-incremental stream (:mod:`synclearn.bench.text_domains`) runs once
per seed; the table gives ACC, BWT and forgetting (Chaudhry et al. 2018) of the next-byte
accuracy matrix, the final mean NLL (nats per byte) and its BWT (> 0: NLL rose on earlier
domains), as mean ± std over seeds, and training seconds. ``--lrs`` sweeps learning rates
instead (tune on other seeds than the reported ones).

    python experiments/bench_text_domains.py [--seeds 0] [--methods naive replay ...]
        [--domains arithmetic code chat | FILE ...] [--steps 100]
        [--warmup prose] [--warmup-steps 200 | 0] [--lrs 1e-3 1e-2] [--out experiments/out/bench_text_domains.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_split_digits import mean_curve, mean_std  # noqa: E402
from common import environment, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent


def summarize_runs(runs: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Group runs by ``keys`` (first-seen order); mean ± std of each metric over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    rows = []
    for key, rs in groups.items():
        row = dict(zip(keys, key), seeds=len(rs), lr=f"{rs[0]['lr']:g}")
        for m in ("acc", "bwt", "forgetting", "fwt", "nll", "nll_bwt", "seconds"):
            mu, sd = mean_std([r[m] for r in rs])
            row[m], row[f"{m}_std"] = mu, sd
            row[m.upper() if m != "seconds" else m] = f"{mu:.3f} ± {sd:.3f}" if m != "seconds" else f"{mu:.1f}"
        if rs[0]["warmup"]:  # accuracy lost on the warm-up domains over the whole stream
            drop = mean_std([statistics.fmean(r["warmup"]["acc_before"]) - statistics.fmean(r["warmup"]["acc_after"])
                             for r in rs])
            row["warmup_drop"], row["WARMUP_DROP"] = drop[0], f"{drop[0]:.3f} ± {drop[1]:.3f}"
        rows.append(row)
    return rows


def main() -> None:
    import torch

    from synclearn.bench.text_domains import DEFAULT_DOMAINS, METHODS, run_text_domains

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--domains", nargs="+", default=list(DEFAULT_DOMAINS), help="built-in names or text files")
    ap.add_argument("--steps", type=int, default=100, help="learning steps per domain")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--buffer-size", type=int, default=64)
    ap.add_argument("--neuron-fraction", type=float, default=0.05)
    ap.add_argument("--warmup", nargs="*", default=["prose"], help="domains to warm the model up on (dense AdamW)")
    ap.add_argument("--warmup-steps", type=int, default=200, help="0: learn the stream from a random init")
    ap.add_argument("--model", default="mcsd-tiny")
    ap.add_argument("--lrs", nargs="+", type=float, default=None, help="sweep these learning rates")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench_text_domains.json")
    ap.add_argument("--plots", action="store_true", help="also write a heatmap per run next to --out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    runs, t0 = [], time.perf_counter()
    plot_dir = args.out.parent / args.out.stem if args.plots else None
    for method in args.methods:
        for lr in args.lrs or [None]:
            for seed in args.seeds:
                kw = {} if lr is None else {"lr": lr}
                r = run_text_domains(method, seed=seed, domains=args.domains, steps_per_domain=args.steps,
                                     batch_size=args.batch_size, buffer_size=args.buffer_size,
                                     neuron_fraction=args.neuron_fraction, model=args.model, warmup=args.warmup,
                                     warmup_steps=args.warmup_steps, out_dir=plot_dir, **kw)
                runs.append(r)
                print(f"  {method:14s} lr={r['lr']:g} seed={seed}: ACC {r['acc']:.3f} BWT {r['bwt']:.3f} "
                      f"F {r['forgetting']:.3f} NLL {r['nll']:.3f} ({r['seconds']:.1f} s)", flush=True)
    rows = summarize_runs(runs, ("method", "lr") if args.lrs else ("method",))
    print()
    print_table(rows, ["method", "lr", "seeds", "ACC", "BWT", "FORGETTING", "NLL", "NLL_BWT", "WARMUP_DROP",
                       "seconds"])
    if plot_dir is not None and not args.lrs:
        from synclearn.eval.plots import plot_forgetting_curves

        curves = {m: mean_curve([r["forgetting_curve"] for r in runs if r["method"] == m]) for m in args.methods}
        plot_forgetting_curves(curves, plot_dir / "forgetting.png", xlabel="after learning domain k",
                               title=f"text domains, mean over {len(args.seeds)} seeds")
    write_json(args.out, {"benchmark": "text_domains", "args": vars(args), "environment": environment(),
                          "wall_seconds": time.perf_counter() - t0, "summary": rows, "runs": runs})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
