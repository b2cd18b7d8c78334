"""A 1B-parameter MCSD model learns on this machine: memory and speed of learning vs inference.

Loads ``mcsd-1b`` (random init; fp32 weights by default, ``--dtype bfloat16`` halves them) and
runs, each in a fresh process: inference alone on a batch of chat turns (a prefill, what a
server does), and a few sparse learning steps on the same batch (5% of the neurons of the
last 4 layers). Reports peak RSS, seconds per step and tokens/s. On a CUDA device the same
runs report peak GPU memory too.

Goal (issue 3): learning peak RSS <= 1.3x the inference peak RSS, and it completes.

    python experiments/scale_1b.py [--dtype float32] [--steps 3] [--batch 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, print_table, run_child, write_json  # noqa: E402

BENCH = str(Path(__file__).resolve().parent / "bench_memory.py")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mcsd-1b")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--out", default="experiments/out/scale_1b.json")
    args = ap.parse_args()
    common = ["--model", args.model, "--steps", str(args.steps), "--batch", str(args.batch),
              "--fraction", str(args.fraction), "--dtype", args.dtype, "--device", args.device]
    rows = [run_child(BENCH, [*common, "--family", f]) for f in ("infer", "sparse")]
    infer, learn = rows
    for r in rows:
        r["rss_vs_infer"] = r["peak_rss_mb"] / infer["peak_rss_mb"]
    print(f"\n{args.model}: {infer['params'] / 1e9:.3f}B parameters, {args.dtype} weights, "
          f"{infer['batch_tokens']} tokens per batch\n")
    print_table(rows, ["family", "load_rss_mb", "peak_rss_mb", "peak_gpu_mb", "rss_vs_infer", "s_per_step", "tokens_per_s"])
    ratio = learn["peak_rss_mb"] / infer["peak_rss_mb"]
    goal = {"value": ratio, "target": 1.3, "met": ratio <= 1.3 and learn["skipped"] == 0}
    print(f"\nlearning loss {learn['loss_first']:.3f} -> {learn['loss_last']:.3f} over {args.steps} steps; "
          f"training state {learn['state_bytes'] / 2**20:.0f} MiB + {learn['scratch_bytes'] / 2**20:.0f} MiB scratch")
    print(f"goal learning peak RSS <= 1.3x inference: {ratio:.3f} -> {'met' if goal['met'] else 'NOT met'}")
    path = write_json(args.out, {"config": vars(args), "environment": environment(), "results": rows, "goal": goal})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
