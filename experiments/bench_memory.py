"""Training memory per update family: sparse (5% of neurons) vs LoRA vs full AdamW.

For one model (default ``mcsd-small``) and one batch of chat examples, each family runs a few
learning steps in its own process. Reported per family:

* training state per model parameter: bytes held for learning (optimizer state; LoRA adapter
  weights) plus the step's scratch (gathered slices and gradients), divided by the number of
  model parameters. The model's own weights are not counted; full AdamW in fp32 holds
  grads + two moments = 12 bytes/param (16 with the fp32 weights themselves);
* peak RSS of the process, and of an inference-only process on the same batch.

Goal (issue 3): sparse <= 0.4 bytes of training state per parameter.

    python experiments/bench_memory.py [--model mcsd-small] [--steps 3] [--out experiments/out/bench_memory.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, peak_rss_mb, print_table, run_child, write_json  # noqa: E402

FAMILIES = ("infer", "sparse", "lora", "full")


def child(model_name: str, family: str, steps: int, batch: int, fraction: float, dtype: str, device: str) -> dict:
    import torch

    from synclearn.data import chat_pairs
    from synclearn.learn import Learner
    from synclearn.learn.batch import build_batch
    from synclearn.model import load_model

    torch.manual_seed(0)
    model = load_model(model_name, dtype=dtype, device=device)
    n_params = model.num_parameters()
    examples = chat_pairs(batch, seed=0)
    b = build_batch(model.tokenizer, examples, max_seq_len=512, pad_id=256, device=model.device)
    tokens = b.inputs.numel()
    base = {"family": family, "params": n_params, "batch_tokens": tokens, "load_rss_mb": peak_rss_mb(), "device": device}

    def gpu(out: dict) -> dict:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out
    if family == "infer":
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(steps):
                model(b.inputs)
        if b.inputs.is_cuda:
            torch.cuda.synchronize()  # time the kernels, not their launches
        s = (time.perf_counter() - t0) / steps
        return gpu({**base, "peak_rss_mb": peak_rss_mb(), "s_per_step": s, "tokens_per_s": tokens / s})
    learner = Learner(model, update=family, neuron_fraction=fraction)
    t0 = time.perf_counter()
    results = [learner.step(examples) for _ in range(steps)]
    s = (time.perf_counter() - t0) / steps
    state = learner.training_state_bytes()
    scratch = max(r.scratch_bytes for r in results)
    return gpu({**base, "state_bytes": state, "scratch_bytes": scratch, "bytes_per_param": (state + scratch) / n_params,
                "peak_rss_mb": peak_rss_mb(), "s_per_step": s, "tokens_per_s": tokens / s,
                "loss_first": results[0].loss, "loss_last": results[-1].loss, "skipped": sum(r.skipped for r in results)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mcsd-small")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (peak GPU memory is reported on CUDA)")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of " + ",".join(FAMILIES))
    ap.add_argument("--out", default="experiments/out/bench_memory.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--family", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.family, args.steps, args.batch, args.fraction, args.dtype, args.device)))
        return
    common = ["--model", args.model, "--steps", str(args.steps), "--batch", str(args.batch),
              "--fraction", str(args.fraction), "--dtype", args.dtype, "--device", args.device]
    rows = [run_child(__file__, [*common, "--family", f]) for f in args.families.split(",")]
    infer_rss = rows[0]["peak_rss_mb"]
    for r in rows:
        r["rss_vs_infer"] = r["peak_rss_mb"] / infer_rss
        if "state_bytes" in r:
            r["state_mb"] = r["state_bytes"] / 2**20
            r["scratch_mb"] = r["scratch_bytes"] / 2**20
    print(f"\n{args.model}: {rows[0]['params'] / 1e6:.1f}M parameters, {args.dtype}, batch {args.batch}, "
          f"sparse budget {args.fraction:.0%} of neurons per plastic layer\n")
    print_table(rows, ["family", "bytes_per_param", "state_mb", "scratch_mb", "peak_rss_mb", "peak_gpu_mb", "rss_vs_infer",
                       "s_per_step", "tokens_per_s"])
    sparse = next(r for r in rows if r["family"] == "sparse")
    goal = {"value": sparse["bytes_per_param"], "target": 0.4, "met": sparse["bytes_per_param"] <= 0.4}
    print(f"\ngoal sparse <= 0.4 bytes/param: {goal['value']:.3f} -> {'met' if goal['met'] else 'NOT met'}")
    path = write_json(args.out, {"config": vars(args), "environment": environment(), "results": rows, "goal": goal})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
