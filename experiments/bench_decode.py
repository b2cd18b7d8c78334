"""Decode and training benchmark: MCSD vs a Transformer of the same parameter count (issue 2).

``--model`` (default ``mcsd-small``) runs side by side with a randomly initialized
``transformers.LlamaForCausalLM`` of the same width, depth, vocab, tying and parameter count
(the MLP width is solved for the count). Measured, for each context x batch:

* decode tokens/s = B * N / seconds: prefill the context, one warm-up token, then
  ``--repeats`` greedy runs of N = ``--new-tokens`` tokens, the models taking turns (the
  machine may be shared, so the fastest run counts). The Llama decodes with ``use_cache=True``
  on a ``DynamicCache``;
* prefill tokens/s (that single prefill pass) and state bytes (``MCSDState.nbytes()`` vs the
  KV cache's key + value tensors);
* once: training tokens/s at ``--train-seq`` (forward + backward + AdamW on random tokens;
  a warm-up step, then the fastest of ``--train-steps`` steps, models taking turns).

On CUDA it also decodes ``--big-model`` (``mcsd-1b``) vs a same-size Llama in bf16 at batch 1
(plain eager). Prints a table; writes config, environment, figures and goal checks to ``--out``.

    .venv/bin/python experiments/bench_decode.py            # CPU defaults: ~5-7 min on 2 cores
    .venv/bin/python experiments/bench_decode.py --contexts 256 1024 --batches 1 --train-steps 1
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicCache

from synclearn.model import SparseSpec, load_model

TOKENS = 263  # random ids are drawn from [0, 263), the byte tokenizer's range
GOALS = {"decode_speedup": 3.0, "decode_flatness": 0.9, "train_speedup": 1.5}
LLAMA_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "vocab_size", "tie_word_embeddings")


class MCSDSide:
    """The MCSD model behind the common prefill / step / train interface."""

    label = "MCSD"
    def __init__(self, model) -> None:
        self.model = model

    def prefill(self, ids):  # [B, T] -> (last logits [B, V], state)
        logits, state = self.model.prefill(ids)
        return logits[:, -1], state

    def step(self, tok, state):  # [B] -> (logits [B, V], state)
        return self.model.step(tok, state)

    def state_bytes(self, state) -> int:
        return state.nbytes()

    def logits(self, ids):  # [B, T] -> [B, T, V]
        return self.model(ids)


class MCSDSparseSide(MCSDSide):
    """MCSD decoding with sparse inference: each MLP computes only the ``fraction`` of its neurons
    that the low-rank predictor names (brain-like activation); prefill stays dense."""

    def __init__(self, model, fraction: float) -> None:
        super().__init__(model)
        self.spec, self.fraction = SparseSpec(max(1, round(fraction * model.config.d_ff)), "predictor"), fraction
        self.label = f"MCSD sparse {fraction:.0%}"

    def step(self, tok, state):
        return self.model.step(tok, state, sparse=self.spec)


class LlamaSide(MCSDSide):
    """A Hugging Face Llama with a DynamicCache behind the same interface."""

    label = "Transformer"
    def prefill(self, ids):
        cache = DynamicCache(config=self.model.config)
        out = self.model(ids, **{self.cache_arg: cache}, use_cache=True)
        return out.logits[:, -1], cache

    def step(self, tok, cache):
        return self.model(tok[:, None], **{self.cache_arg: cache}, use_cache=True).logits[:, -1], cache

    @property
    def cache_arg(self) -> str:
        """transformers 5.x renamed ``past_key_values`` to ``cache`` (see synclearn.model.hf)."""
        return "cache" if "cache" in inspect.signature(type(self.model).forward).parameters else "past_key_values"

    def state_bytes(self, cache) -> int:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)

    def logits(self, ids):
        return self.model(ids, use_cache=False).logits


def llama_like(mcsd, max_positions: int) -> LlamaConfig:
    """A Llama config with the MCSD model's width, depth, vocab and tying, and its parameter count."""
    cfg = mcsd.config
    d, n = cfg.d_model, cfg.n_layers
    outside = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2) + d  # embeddings (+ head) + final norm
    per_layer = (mcsd.num_parameters() - outside) / n
    ff = max(64, round((per_layer - 4 * d * d - 2 * d) / (3 * d) / 64) * 64)  # attention 4d^2, MLP 3 d ff, 2 norms
    heads = max(1, d // 64)
    return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=d, intermediate_size=ff, num_hidden_layers=n,
                       num_attention_heads=heads, num_key_value_heads=heads, tie_word_embeddings=cfg.tie_embeddings,
                       max_position_embeddings=max_positions)


def build_pair(name: str, device: str, dtype: torch.dtype, seed: int, max_positions: int):
    mcsd = load_model(name, seed=seed, dtype=dtype, device=device)
    config = llama_like(mcsd, max_positions)
    torch.manual_seed(seed)
    with torch.device(device):
        llama = LlamaForCausalLM(config).to(dtype).eval()
    return MCSDSide(mcsd), LlamaSide(llama)


def timed(fn, device: str) -> float:
    """Seconds that ``fn()`` takes, with the device synchronized on both ends."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


class Decoder:
    """One model's greedy decoding session: prefill (timed), a warm-up token, then timed runs."""

    def __init__(self, side, ids, device: str) -> None:
        self.side, self.device, self.runs_s = side, device, []
        self.prefill_s = timed(lambda: self._take(side.prefill(ids)), device)
        self.nbytes = side.state_bytes(self.state)
        self._steps(1)  # warm-up token

    def _take(self, out) -> None:
        logits, self.state = out  # logits [B, V]
        self.tok = logits.argmax(-1)  # greedy, [B]

    def _steps(self, n: int) -> None:
        for _ in range(n):
            self._take(self.side.step(self.tok, self.state))

    def run(self, n: int) -> None:
        self.runs_s.append(timed(lambda: self._steps(n), self.device))


def measure_decode(sides, ctx: int, batch: int, args, device: str) -> list[dict]:
    """Prefill ``ctx`` random tokens into every model, then time greedy decoding, the models
    taking turns run by run so that load from other jobs hits them alike. One dict per model."""
    gen = torch.Generator().manual_seed(args.seed + ctx + batch)
    ids = torch.randint(0, TOKENS, (batch, ctx), generator=gen).to(device)
    with torch.inference_mode():
        decoders = [Decoder(side, ids, device) for side in sides]
        for _ in range(args.repeats):
            for d in decoders:
                d.run(args.new_tokens)
    out = [{"decode": batch * args.new_tokens / min(d.runs_s), "prefill": batch * ctx / d.prefill_s,
            "state bytes": d.nbytes, "runs_s": d.runs_s} for d in decoders]
    del decoders
    gc.collect()
    return out


def measure_training(sides, args, device: str) -> list[dict]:
    """Forward + backward + AdamW on random tokens, models taking turns step by step; one warm-up
    step each, then tokens/s of the fastest of ``--train-steps`` steps. One dict per model."""
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, TOKENS, (args.train_batch, args.train_seq + 1), generator=gen).to(device)
    opts = [torch.optim.AdamW(side.model.train().parameters(), lr=1e-4) for side in sides]

    def train_step(side, opt) -> None:
        logits = side.logits(ids[:, :-1])  # [B, T, V]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = [[timed(lambda: train_step(side, opt), device) for side, opt in zip(sides, opts)]
             for _ in range(args.train_steps + 1)][1:]  # the first round is the warm-up
    for side in sides:
        side.model.eval()
    del opts
    gc.collect()
    return [{"train": args.train_batch * args.train_seq / min(ts), "runs_s": list(ts)} for ts in zip(*times)]


def pair_rows(labels, metrics, ctx, batch, m: dict, t: dict) -> list[dict]:
    """Table rows for each metric: MCSD (with its ratio to the Transformer), then the Transformer."""
    rows = []
    for metric in metrics:
        unit = "B" if metric == "state bytes" else "tok/s"
        for label, r, ratio in ((labels[0], m, m[metric] / t[metric]), (labels[1], t, None)):
            rows.append(dict(model=label, metric=metric, context=ctx, batch=batch, value=r[metric], unit=unit,
                             ratio=ratio, **({"runs_s": r["runs_s"]} if metric in ("decode", "train") else {})))
    return rows


def compare_decode(mcsd, llama, contexts, batches, args, device, tag="") -> list[dict]:
    """Decode/prefill/state rows for every (context, batch), MCSD and Transformer interleaved
    (plus MCSD with sparse inference, decode only, when ``--sparse-fraction`` > 0)."""
    rows = []
    sparse = MCSDSparseSide(mcsd.model, args.sparse_fraction) if args.sparse_fraction > 0 else None
    for batch in batches:
        for ctx in contexts:
            log(f"decode{tag}: context {ctx}, batch {batch}")
            m, t, *sp = measure_decode((mcsd, llama) + ((sparse,) if sparse else ()), ctx, batch, args, device)
            rows += pair_rows((mcsd.label + tag, llama.label + tag), ("decode", "prefill", "state bytes"), ctx, batch, m, t)
            if sp:
                rows.append(dict(model=sparse.label + tag, metric="decode", context=ctx, batch=batch,
                                 value=sp[0]["decode"], unit="tok/s", ratio=sp[0]["decode"] / t["decode"],
                                 runs_s=sp[0]["runs_s"]))
    return rows


def goals(rows: list[dict], contexts: list[int], batches: list[int], args) -> dict:
    def value(model, metric, ctx, batch):
        return next(r for r in rows if (r["model"], r["metric"], r["context"], r["batch"]) == (model, metric, ctx, batch))

    out, lo, hi = {}, min(contexts), max(contexts)
    for b in batches:
        speedup = value("MCSD", "decode", hi, b)["ratio"]
        flat = value("MCSD", "decode", hi, b)["value"] / value("MCSD", "decode", lo, b)["value"]
        out[f"decode_speedup_ctx{hi}_b{b}"] = (speedup, GOALS["decode_speedup"])
        out[f"decode_flatness_ctx{hi}_vs_{lo}_b{b}"] = (flat, GOALS["decode_flatness"])
    out[f"train_speedup_seq{args.train_seq}"] = (value("MCSD", "train", args.train_seq, args.train_batch)["ratio"],
                                                 GOALS["train_speedup"])
    return {k: {"value": v, "target": t, "met": bool(v >= t)} for k, (v, t) in out.items()}


def fmt(v) -> str:
    if v is None or isinstance(v, int):
        return "-" if v is None else f"{v:,}"
    return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3f}"


def print_table(rows: list[dict], goal_checks: dict) -> None:
    head = ("model", "metric", "context", "batch", "value", "unit", "MCSD/Transformer")
    cells = [head] + [tuple(fmt(r[k]) if k in ("value", "ratio") else str(r[k]) for k in
                            ("model", "metric", "context", "batch", "value", "unit", "ratio")) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for i, c in enumerate(cells):
        print("  ".join(s.ljust(w) if j < 2 or j == 5 else s.rjust(w) for j, (s, w) in enumerate(zip(c, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()
    for name, g in goal_checks.items():
        print(f"goal {name:<32} {g['value']:8.3f} >= {g['target']:<4} {'MET' if g['met'] else 'not met'}")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mcsd-small", help="named MCSD size to compare")
    p.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--new-tokens", type=int, default=32, help="decoded tokens per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed decode runs; the fastest counts")
    p.add_argument("--train-seq", type=int, default=2048)
    p.add_argument("--train-batch", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--big-model", default="mcsd-1b", help="CUDA only: bf16 batch-1 decode ('none' to skip)")
    p.add_argument("--sparse-fraction", type=float, default=0.1,
                   help="also decode MCSD with sparse inference over this share of neurons (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="experiments/out/bench_decode.json")
    args = p.parse_args(argv)
    ints = {"contexts": args.contexts, "batches": args.batches, **{k: [getattr(args, k)] for k in
            ("new_tokens", "repeats", "train_seq", "train_batch", "train_steps", "threads")}}
    bad = [f"--{k.replace('_', '-')}={' '.join(map(str, v))} (expected positive integers)"
           for k, v in ints.items() if min(v) < 1]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        bad.append(f"--device={args.device} (CUDA is not available here; use cpu)")
    if bad:
        p.error("; ".join(bad))
    return args


def run_benchmarks(args, contexts: list[int], batches: list[int]) -> tuple[list[dict], dict]:
    """Every measurement; returns (table rows, model metadata)."""
    device = args.device
    max_pos = max(max(contexts) + (args.repeats + 1) * args.new_tokens + 1, args.train_seq + 1)
    mcsd, llama = build_pair(args.model, device, torch.float32, args.seed, max_pos)
    meta = {"parameters": {"mcsd": mcsd.model.num_parameters(), "transformer": llama.model.num_parameters()},
            "transformer_config": {k: getattr(llama.model.config, k) for k in LLAMA_KEYS}}
    rows = compare_decode(mcsd, llama, contexts, batches, args, device)
    log(f"training: sequence {args.train_seq}, batch {args.train_batch}")
    m, t = measure_training((mcsd, llama), args, device)
    rows += pair_rows((mcsd.label, llama.label), ("train",), args.train_seq, args.train_batch, m, t)
    del mcsd, llama
    gc.collect()
    if device.startswith("cuda") and args.big_model != "none":
        bm, bl = build_pair(args.big_model, device, torch.bfloat16, args.seed, max_pos)
        meta["big"] = {"name": args.big_model, "dtype": "bfloat16", "mcsd": bm.model.num_parameters(),
                       "transformer": bl.model.num_parameters()}
        rows += compare_decode(bm, bl, contexts, [1], args, device, tag=f" {args.big_model} bf16")
        del bm, bl
    return rows, meta


def environment(device: str) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), platform.machine())
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "cpu": cpu, "device": device, "device_name": gpu}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    contexts, batches = sorted(set(args.contexts)), sorted(set(args.batches))
    load_start = os.getloadavg()  # other jobs on the machine distort timings; recorded for the reader
    rows, meta = run_benchmarks(args, contexts, batches)
    goal_checks = goals(rows, contexts, batches, args)
    env = environment(args.device) | {"loadavg_start": load_start, "loadavg_end": os.getloadavg()}
    counts = meta["parameters"]
    print(f"parameters: MCSD {counts['mcsd']:,}, Transformer {counts['transformer']:,} "
          f"({counts['transformer'] / counts['mcsd'] - 1:+.1%}); threads {env['threads']}; device {env['device_name']}\n")
    print_table(rows, goal_checks)
    report = {"command": " ".join(["python", *sys.argv]), "config": {**vars(args), **meta}, "environment": env,
              "results": rows, "goals": goal_checks}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
