"""Brain-like activation that saves compute (issue 15): sparse decode and the sparse step, side by side.

One run measures, on this machine (CPU unless ``--device cuda``; one torch thread unless
``--threads``), the issue's goals side by side:

1. **the chat base at 10/25/50% of the neurons vs dense**: held-out NLL and batch-1 decode
   speed of one model with its predictors fitted (``fit_predictors`` on its training text).
   The model is ``--base``: ``mcsd-chat`` (the cached pretrained chat base, pretrained on first
   use; the full run's default) or ``quick-train`` (a ``mcsd-chat``-shaped model trained here
   for ``--nll-train-steps`` steps; ``--quick``'s default); the report says which. The held-out
   text is chat turns from another seed; NLL = mean cross-entropy per token of the sparse
   chunked form (each token uses its own k neurons, as decoding does).
2. **decode at 10/25/50% of the neurons vs dense**, batch 1, on ``--model`` (default
   ``mcsd-small``, random weights, predictors fitted on the MLP inputs of the built-in corpus):
   a width where the MLP's weights, not the dispatch of small kernels, are what a step costs.
   Same prefilled context, the sides taking turns run by run; the fastest run counts.
3. **decode at ``--long-context`` tokens**: that model dense and with sparse decode at the first
   fraction vs a same-size ``LlamaForCausalLM`` with a KV cache (bench_decode's Llama).
4. **the sparse learning step at ``--learn-fraction``** on ``--model``: its compute (trace,
   selection, forward through the gathered neurons, gradients) as the issue found it (two whole
   forwards), in two passes (:func:`synclearn.learn.sparse.trace_pass` +
   :func:`~synclearn.learn.sparse.resumed_forward`) and in the learner's one pass
   (:func:`~synclearn.learn.sparse.selecting_forward`), and whether all three give bitwise
   equal selections, losses and gradients.
5. **training tokens/s at ``--train-seq``**, MCSD vs the same Llama (forward + backward + AdamW).

Each sparse-decode row also carries ``bound``: the weight bytes a dense token reads over those a
sparse one reads (mixers, predictors, head and the chosen share of the MLPs) -- the most a
bandwidth-bound decode can gain at that share, whatever the kernel.

Prints a table, writes JSON to ``--out``. Wall-clock figures: the machine may be shared (the
load average is recorded).

    .venv/bin/python experiments/bench_sparse.py --quick    # ~3 min, one thread
    .venv/bin/python experiments/bench_sparse.py            # the issue's sizes (4096 context, 2048 train): ~7 min
    .venv/bin/python experiments/bench_sparse.py --parts learn   # one part (nll base decode learn long)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import LlamaSide, MCSDSide, MCSDSparseSide, llama_like, measure_decode, measure_training  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402
from common import environment, print_table, write_json  # noqa: E402

from synclearn.data import chat_pairs, encode_corpus  # noqa: E402
from synclearn.learn.select import SELECTORS  # noqa: E402
from synclearn.learn.sparse import step_forward  # noqa: E402
from synclearn.model import ByteTokenizer, SparseSpec, build_model, fit_predictors, load_model, named_config  # noqa: E402
from synclearn.model import NeuronTrace  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench_sparse] {msg}", file=sys.stderr, flush=True)


def corpus_batches(seq: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    ids = encode_corpus(400, seed)
    starts = torch.randint(0, len(ids) - seq - 1, (n,), generator=torch.Generator().manual_seed(seed))
    return [ids[s : s + seq + 1][None] for s in starts.tolist()]


def decode_vs_fraction(args, model=None, name=None, part="decode vs dense") -> tuple[list[dict], object]:
    """Batch-1 decode at each fraction vs dense; ``model`` (predictors fitted) or ``--model``
    built here. Returns (rows, the model)."""
    if model is None:
        model, name = load_model(args.model, seed=args.seed, device=args.device), args.model
        log(f"fitting predictors of {args.model}")
        fit_predictors(model, [b[:, :-1].to(args.device) for b in corpus_batches(256, 4)], steps=args.predictor_steps)
    model.eval()
    sides = [MCSDSide(model)] + [MCSDSparseSide(model, f) for f in args.fractions]
    log(f"{part} ({name}): decode at {args.fractions} of the neurons vs dense, context {args.context}")
    out = measure_decode(sides, args.context, 1, args, args.device)
    return [dict(part=part, model=name, side=s.label, context=args.context, value=r["decode"],
                 unit="tok/s", ratio=r["decode"] / out[0]["decode"], runs_s=r["runs_s"],
                 **({"bound": weight_bytes_bound(model.config, s.fraction)} if getattr(s, "fraction", None) else {}))
            for s, r in zip(sides, out)], model


def layer_weights(config) -> tuple[int, int, int]:
    """Weight elements of one MCSD layer: (mixer: 4 in + 2 out projections, MLP: up + down,
    predictor with its bias)."""
    d, ff, r = config.d_model, config.d_ff, config.predictor_rank
    return 6 * d * d, 2 * d * ff, r * (d + ff) + ff if r else 0


def weight_bytes_bound(config, fraction: float) -> float:
    """Dense weight elements read per decoded token over sparse ones at ``fraction`` of each MLP's
    neurons: the speed-up limit of a bandwidth-bound decode (the state is a few KB; not counted)."""
    mixer, mlp, pred = layer_weights(config)
    head = config.vocab_size * config.d_model
    dense = config.n_layers * (mixer + mlp) + head
    sparse = config.n_layers * (mixer + pred + fraction * mlp) + head
    return round(dense / sparse, 3)


def trained_base(args):
    if args.base != "quick-train":
        return load_model(args.base), f"{args.base} (load_model)"
    cfg = named_config("mcsd-chat")
    model = build_model(cfg, seed=args.seed).train()
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if ".predictor." not in n], lr=3e-3)
    data = encode_corpus(400, args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    for _ in range(args.nll_train_steps):
        starts = torch.randint(0, len(data) - 129, (16,), generator=gen)
        batch = torch.stack([data[s : s + 129] for s in starts.tolist()])
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval(), f"mcsd-chat shape trained here for {args.nll_train_steps} steps (final loss {float(loss):.3f})"


def nll_vs_fraction(args) -> tuple[list[dict], str, object]:
    model, which = trained_base(args)
    log(f"held-out NLL on {which}")
    recall = fit_predictors(model, [b[:, :-1] for b in corpus_batches(128, 16, args.seed)], steps=args.predictor_steps)
    tok = ByteTokenizer()
    ids = []
    for pair in chat_pairs(60, seed=args.seed + 991):  # held out: another seed's turns
        p, r = tok.turn(pair["prompt"], pair["response"])
        ids += p + r
    held = torch.tensor(ids[: args.nll_tokens + 1])[None]
    rows, dense_nll = [], None
    with torch.inference_mode():
        for frac in [1.0, *args.fractions]:
            spec = None if frac == 1.0 else SparseSpec(max(1, round(frac * model.config.d_ff)), "predictor")
            logits = model(held[:, :-1], sparse=spec)
            nll = float(F.cross_entropy(logits.flatten(0, 1).float(), held[:, 1:].flatten()))
            dense_nll = nll if dense_nll is None else dense_nll
            rows.append(dict(part="held-out NLL", model=which.split(" ")[0], side="dense" if spec is None else f"sparse {frac:.0%}",
                             context=held.shape[1] - 1, value=nll, unit="nats/token", ratio=nll / dense_nll))
    rows[0]["predictor_recall_top10"] = {str(k): round(v, 3) for k, v in recall.items()}
    return rows, which, model


def long_context(args, model) -> list[dict]:
    """``model`` (``--model``, predictors fitted) vs a same-size Llama: decode at the long
    context, then training tokens/s."""
    max_pos = max(args.long_context + (args.repeats + 1) * args.new_tokens + 1, args.train_seq + 1)
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        llama = LlamaSide(LlamaForCausalLM(llama_like(model, max_pos)).eval())
    mcsd, sparse = MCSDSide(model), MCSDSparseSide(model, args.fractions[0])
    log(f"decode at context {args.long_context}: MCSD dense / sparse vs Llama with KV cache")
    m, s, t = measure_decode((mcsd, sparse, llama), args.long_context, 1, args, args.device)
    rows = [dict(part="long-context decode", model=args.model, side=side.label, context=args.long_context, value=r["decode"],
                 unit="tok/s", ratio=r["decode"] / t["decode"], runs_s=r["runs_s"])
            for side, r in ((mcsd, m), (sparse, s), (llama, t))]
    log(f"training tokens/s at {args.train_seq}")
    tm, tt = measure_training((mcsd, llama), args, args.device)
    rows += [dict(part="training", model=args.model, side=side.label, context=args.train_seq, value=r["train"], unit="tok/s",
                  ratio=r["train"] / tt["train"], runs_s=r["runs_s"]) for side, r in ((mcsd, tm), (llama, tt))]
    rows[-2]["bound"] = training_flops_bound(model.config, llama.model.config, args.train_seq)
    return rows


def training_flops_bound(mcsd, llama, seq: int) -> float:
    """Llama's matmul flops per trained token over MCSD's at context ``seq``: how far MCSD could
    lead if both ran their matmuls at one rate. Weights: 2 flops per weight element per token
    (x3 with backward, the same factor on both sides); Llama's attention adds QK^T and AV over
    the whole context, 4 * seq * D per layer (no causal skipping: the generous case for MCSD,
    whose scan is counted as free)."""
    d = mcsd.d_model
    mcsd_w = mcsd.n_layers * sum(layer_weights(mcsd)[:2])  # the predictors take no part in training
    llama_w = llama.num_hidden_layers * (4 * d * d + 3 * d * llama.intermediate_size)
    attention = llama.num_hidden_layers * 4 * seq * d / 2  # per weight-flop unit (2 flops per element)
    return round((llama_w + attention) / mcsd_w, 3)


STEP_FORMS = {  # form -> label
    "reference": "two whole forwards (the issue's step)",
    "two_pass": "trace_pass + resumed_forward",
    "one_pass": "one pass (selecting_forward: the learner's)",
}


def sparse_learning(args) -> list[dict]:
    model = load_model(args.model, seed=args.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    n = model.config.n_layers
    layers = list(range(max(0, n - args.plastic_layers), n))
    budget = max(1, round(args.learn_fraction * model.config.d_ff))
    batch = corpus_batches(args.learn_seq, args.learn_batch, args.seed + 5)
    ids = torch.cat(batch)  # [B, T + 1]
    inputs, targets = ids[:, :-1], ids[:, 1:]
    mask = torch.ones_like(inputs, dtype=torch.float32)

    def core(form: str):
        trace = NeuronTrace(mask=mask)
        fn, source = SELECTORS["topk"]
        gen = torch.Generator().manual_seed(0)
        choose = lambda l: fn(getattr(trace, source)[l], budget, locked=None, exploration=0.0, generator=gen)  # noqa: E731
        logits, slices = step_forward(model, inputs, trace, layers, choose, form)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        grads = torch.autograd.grad(loss, [t for sl in slices.values() for t in sl.leaves])
        return [sl.idx for sl in slices.values()], loss, grads

    log(f"sparse learning step at {args.learn_fraction:.0%}, plastic layers {layers}")
    results = {form: core(form) for form in STEP_FORMS}  # warm-up, and the results compared
    ref = results["reference"]
    same = {form: all(torch.equal(a, b) for a, b in zip(r[0], ref[0])) and torch.equal(r[1], ref[1])
            and all(torch.equal(a, b) for a, b in zip(r[2], ref[2])) for form, r in results.items()}
    times = {form: [] for form in STEP_FORMS}
    for _ in range(args.repeats):
        for form in STEP_FORMS:  # the forms take turns, run by run
            t0 = time.perf_counter()
            core(form)
            times[form].append(time.perf_counter() - t0)
    base = min(times["reference"])
    return [dict(part="sparse learning step", model=args.model, side=label, context=args.learn_seq,
                 value=min(times[form]), unit="s", ratio=base / min(times[form]), bitwise_equal=same[form],
                 runs_s=times[form]) for form, label in STEP_FORMS.items()]


PARTS = {"nll": "chat base NLL", "base": "chat base decode", "decode": "decode vs dense",
         "learn": "sparse learning step", "long": "long context + training"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short sizes, one thread (a few minutes on a shared machine)")
    p.add_argument("--model", default="mcsd-small", help="MCSD size for speed (random weights)")
    p.add_argument("--base", default=None, help="the chat base of part 1: a model name/dir, or 'quick-train' "
                   "(default: mcsd-chat, the pretrained base; quick-train with --quick)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    p.add_argument("--context", type=int, default=256, help="prefilled context of the decode-vs-dense part")
    p.add_argument("--long-context", type=int, default=4096)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-seq", type=int, default=2048)
    p.add_argument("--train-batch", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=2)
    p.add_argument("--nll-train-steps", type=int, default=300)
    p.add_argument("--nll-tokens", type=int, default=2048)
    p.add_argument("--predictor-steps", type=int, default=300)
    p.add_argument("--learn-fraction", type=float, default=0.05)
    p.add_argument("--plastic-layers", type=int, default=4, help="the learner's default: the last 4 layers")
    p.add_argument("--learn-seq", type=int, default=128)
    p.add_argument("--learn-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the goals are stated for one)")
    p.add_argument("--compile-decode", action="store_true",
                   help="also decode the chat base through torch.compile (compile_decode; ~20 s of compiling per side)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                   help="which parts to run (default: all): " + ", ".join(f"{k} = {v}" for k, v in PARTS.items()))
    p.add_argument("--out", default="experiments/out/bench_sparse.json")
    args = p.parse_args(argv)
    if args.quick:
        args.context, args.long_context, args.train_seq, args.repeats, args.new_tokens = 64, 1024, 512, 2, 8
        args.nll_train_steps, args.nll_tokens, args.predictor_steps, args.train_steps = 80, 512, 100, 1
        args.learn_seq, args.learn_batch = 64, 4
    if args.base is None:
        args.base = "quick-train" if args.quick else "mcsd-chat"
    bad = [f"--fractions {f} (expected 0 < f < 1)" for f in args.fractions if not 0 < f < 1]
    if not 0 < args.learn_fraction <= 1:
        bad.append(f"--learn-fraction={args.learn_fraction} (expected 0 < f <= 1)")
    if bad:
        p.error("; ".join(bad))
    return args


GOALS = {  # goal -> (part, side at the first fraction or "MCSD", comparison, target)
    "chat base decode at 10% vs dense": ("chat base decode vs dense", "sparse", ">=", 2.5),
    "chat base NLL at 10% / dense": ("held-out NLL", "sparse", "<=", 1.02),
    "mcsd-small decode at 10% vs dense": ("decode vs dense", "sparse", ">=", 2.5),
    "sparse decode at long context vs Llama": ("long-context decode", "sparse", ">=", 8.0),
    "sparse learning step speed-up": ("sparse learning step", STEP_FORMS["one_pass"], ">=", 1.5),
    "training tok/s vs Llama": ("training", "MCSD", ">=", 2.0),
}


def goal_checks(rows: list[dict], args) -> dict:
    ratio = {(r["part"], r["side"]): r["ratio"] for r in rows}
    first = args.fractions[0]
    out = {}
    for name, (part, side, op, target) in GOALS.items():
        key = {"sparse": f"MCSD sparse {first:.0%}" if part != "held-out NLL" else f"sparse {first:.0%}"}.get(side, side)
        if (part, key) not in ratio:  # a part not run (--parts)
            continue
        value = ratio[(part, key)]
        out[name.replace("10%", f"{first:.0%}")] = {"value": value, "target": f"{op} {target}",
                                                    "met": bool(value >= target if op == ">=" else value <= target)}
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start, t0, seconds = os.getloadavg(), time.perf_counter(), {}

    def part(name, fn, *a):
        start = time.perf_counter()
        result = fn(*a)
        seconds[name] = round(time.perf_counter() - start, 1)
        log(f"{name}: {seconds[name]} s")
        return result

    rows, wanted, which = [], set(args.parts), None
    if wanted & {"nll", "base"}:  # the chat base decode runs on the base the NLL part loads
        nll_rows, which, base = part("chat base NLL", nll_vs_fraction, args)
        rows += nll_rows if "nll" in wanted else []
    if "base" in wanted:
        rows += part("chat base decode", decode_vs_fraction, args, base, which.split(" ")[0], "chat base decode vs dense")[0]
        if args.compile_decode:  # the same decode through torch.compile (MCSDLM.compile_decode)
            base.compile_decode()
            rows += part("chat base decode, compiled", decode_vs_fraction, args, base, which.split(" ")[0],
                         "chat base decode vs dense, compiled")[0]
            base.compile_decode(False)
    if wanted & {"decode", "long"}:  # the long-context part runs on the model this part builds
        decode_rows, model = part("decode vs dense", decode_vs_fraction, args)
        rows += decode_rows if "decode" in wanted else []
    if "learn" in wanted:
        rows += part("sparse learning step", sparse_learning, args)
    if "long" in wanted:
        rows += part("long context + training", long_context, args, model)
    goals = goal_checks(rows, args)
    print_table(rows, ["part", "model", "side", "context", "value", "unit", "ratio", "bound"])
    print(f"\ngoals (threads {args.threads}; {time.perf_counter() - t0:.0f} s; load average at start "
          f"{load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores):")
    for k, g in goals.items():
        print(f"  {k:<44} {g['value']:7.3f}  target {g['target']:<7} {'MET' if g['met'] else 'not met'}")
    env = environment() | {"loadavg_start": load_start, "loadavg_end": os.getloadavg(), "cpu_count": os.cpu_count()}
    out = write_json(args.out, {"command": " ".join(["python", *sys.argv]), "config": vars(args), "nll_model": which,
                                "seconds": seconds, "environment": env, "results": rows, "goals": goals})
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
