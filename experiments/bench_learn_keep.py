"""Learn vs keep: recall of taught facts against what else the model kept, per update family.

    python experiments/bench_learn_keep.py --quick      # a small base, 12 facts, 1 seed: a few minutes
    python experiments/bench_learn_keep.py              # the chat base (mcsd-chat), 40 facts, 3 seeds, lr sweep
    python experiments/bench_learn_keep.py --facts 16 --lr-scales 1 --methods sparse-topk-anchors-25 \
        --base-mix n_world=200 world_share=0.7 --anchors turns=1024    # a base variant, a larger anchor pool

Every method learns the same facts from the same batches for the same number of steps
(matched learning effort): each fact is taught in ``repeats`` steps, each batch the fact plus up
to ``replay`` facts taught before it. Then, on the final weights:

* learned: exact-match recall with the teaching question and with another question form, and
  rank recall among the attribute's values (:mod:`synclearn.eval.recall`);
* kept (:mod:`synclearn.eval.retention`, against the base): held-out text NLL change, held-out
  chat NLL change, well-formed answers about untaught people vs the base, locality.

Methods: sparse top-k and sparse specificity (RowSparseAdamW), sparse specificity with plain
SGD, sparse specificity + the memory manager's protection, LoRA and full fine-tuning (AdamW).
The full run sweeps each method's learning rate (x0.5, x1, x2 of its default) so the plot shows
a recall-retention curve per method, the figure of Lin et al. 2025.

Writes ``experiments/out/learn_keep.json`` and ``learn_keep.png``; prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from common import parse_pretrain_settings, parse_settings  # noqa: E402

from synclearn.chat import ChatSession  # noqa: E402
from synclearn.data.facts import QUESTION_FORMS, generate_facts  # noqa: E402
from synclearn.eval.recall import probe_fact  # noqa: E402
from synclearn.eval.retention import RetentionProbe, compare  # noqa: E402
from synclearn.learn import Learner  # noqa: E402
from synclearn.learn.anchors import AnchorSet, anchor_turns  # noqa: E402
from synclearn.memory import MemoryManager  # noqa: E402

ANCHORS = {"per_step": 8, "weight": 3.0, "near_share": 0.75}  # conf/memory/anchors.yaml
METHODS = {  # name -> Learner settings (+ "memory": protection settings, "anchors": AnchorSet settings)
    "sparse-topk": {"update": "sparse", "selector": "topk"},
    "sparse-topk-anchors": {"update": "sparse", "selector": "topk", "anchors": ANCHORS},
    "sparse-specificity": {"update": "sparse", "selector": "specificity"},
    "sparse-specificity-anchors": {"update": "sparse", "selector": "specificity", "anchors": ANCHORS},
    "sparse-specificity-sgd": {"update": "sparse", "selector": "specificity", "optimizer": "sgd"},
    "sparse-specificity-protect": {"update": "sparse", "selector": "specificity",
                                   "memory": {"budget": 0.4, "half_life_steps": 1000}},
    "sparse-topk-sgd-anchors": {"update": "sparse", "selector": "topk", "optimizer": "sgd", "anchors": ANCHORS},
    "sparse-topk-anchors512": {"update": "sparse", "selector": "topk", "anchors": {**ANCHORS, "turns": 512}},
    # the default sparse learner (conf/learner/sparse.yaml: 25% of the neurons at lr 1e-3), without and with anchors
    "sparse-topk-25": {"update": "sparse", "selector": "topk", "neuron_fraction": 0.25, "lr": 1e-3},
    "sparse-topk-anchors-25": {"update": "sparse", "selector": "topk", "neuron_fraction": 0.25, "lr": 1e-3,
                               "anchors": ANCHORS},
    "lora": {"update": "lora"},
    "lora-anchors": {"update": "lora", "anchors": ANCHORS},
    "full": {"update": "full"},
    "full-anchors": {"update": "full", "anchors": ANCHORS},
}


def base_model(name: str, mix: dict | None = None):
    """The quick base (a small MCSD pretrained on the chat mix, cached) or the chat base; ``mix``:
    :class:`~synclearn.learn.pretrain.PretrainConfig` fields changed (a base variant, trained once and cached)."""
    from synclearn.learn.pretrain import pretrained_model

    if name == "quick":
        return pretrained_model("mcsd-tiny", steps=400, progress=False, threads=1, **(mix or {}))
    return pretrained_model("mcsd-chat", threads=1, **(mix or {}))


def parse_anchors(items: list[str]) -> dict:
    """Anchor settings (AnchorSet.build's), e.g. ``["turns=1024", "weight=1.5"]``."""
    from synclearn.learn.anchors import ANCHOR_SETTINGS, anchor_settings_errors

    return parse_settings(items, "--anchors", list(ANCHOR_SETTINGS), anchor_settings_errors)


def teach(model, settings: dict, facts, forms, *, repeats: int, replay: int, lr_scale: float, seed: int,
          neuron_fraction: float) -> Learner:
    kw = {k: v for k, v in settings.items() if k not in ("memory", "anchors", "neuron_fraction")}
    neuron_fraction = settings.get("neuron_fraction", neuron_fraction)  # a method's own budget, else --neuron-fraction
    memory = None
    if settings.get("selector") == "specificity":  # the manager hands the selector the background statistics
        memory = MemoryManager(protection=settings.get("memory"), background_tokens=16_384)
    learner = Learner(model, neuron_fraction=neuron_fraction, seed=seed, memory=memory, **kw)
    if lr_scale != 1.0:
        learner.set_lr(learner.lr * lr_scale)
    if settings.get("anchors") is not None:  # the base's own predictions on pretraining-style turns
        opts = dict(settings["anchors"])
        learner.set_anchors(AnchorSet.build(model, anchor_turns(opts.pop("turns", 128), seed=seed), seed=seed, **opts))
    rng = random.Random(f"learn-keep-{seed}")
    examples = [{"id": i + 1, "prompt": f.question(k), "response": f.answer()} for i, (f, k) in enumerate(zip(facts, forms))]
    for i, ex in enumerate(examples):
        for _ in range(repeats):
            earlier = rng.sample(examples[:i], min(replay, i))
            extra = []
            if learner.anchors is not None:
                extra = learner.anchors.draw_for(learner.committed_steps, [ex, *earlier], model.tokenizer)
            learner.step([ex, *earlier, *extra])
    return learner


def run_one(model_state, make_model, method: str, lr_scale: float, seed: int, args, probe: RetentionProbe,
            before: dict) -> dict:
    model = make_model()
    model.load_state_dict(model_state)
    facts = generate_facts(args.facts, seed=seed)
    rng = random.Random(f"learn-keep-forms-{seed}")
    forms = [rng.randrange(len(QUESTION_FORMS)) for _ in facts]
    t0 = time.perf_counter()
    learner = teach(model, METHODS[method], facts, forms, repeats=args.repeats, replay=args.replay, lr_scale=lr_scale,
                    seed=seed, neuron_fraction=args.neuron_fraction)
    learn_s = time.perf_counter() - t0
    session = ChatSession(model, None, max_new_tokens=24)
    same = [probe_fact(model, session, f, f.question(k)) for f, k in zip(facts, forms)]
    other = [probe_fact(model, session, f, f.question((k + 1) % len(QUESTION_FORMS))) for f, k in zip(facts, forms)]
    kept = compare(before, probe.measure(model))
    free = {}
    if learner.update == "sparse":
        for layer in learner.plastic_layers:
            mask = learner.protected(layer)
            free[layer] = 1.0 if mask is None else 1.0 - float(mask.float().mean())
    return {"method": method, "lr_scale": lr_scale, "seed": seed, "lr": learner.lr,
            "recall_same": float(np.mean([p.exact for p in same])), "recall_other": float(np.mean([p.exact for p in other])),
            "rank_same": float(np.mean([p.ranked for p in same])), "rank_other": float(np.mean([p.ranked for p in other])),
            **{k: v for k, v in kept.items()}, "free_share_min": min(free.values()) if free else float("nan"),
            "steps": learner.committed_steps, "learn_s": learn_s}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per (method, lr_scale)."""
    keys = ("recall_same", "recall_other", "rank_same", "text_nll_change", "chat_nll_change", "format_vs_base",
            "locality", "free_share_min")
    out = []
    for method in METHODS:
        for scale in sorted({r["lr_scale"] for r in rows if r["method"] == method}):
            group = [r for r in rows if r["method"] == method and r["lr_scale"] == scale]
            entry = {"method": method, "lr_scale": scale, "seeds": len(group)}
            for k in keys:
                vals = np.array([g[k] for g in group], dtype=float)
                entry[k], entry[k + "_std"] = float(np.mean(vals)), float(np.std(vals))
            out.append(entry)
    return out


def plot(summary: list[dict], path: Path, y: str = "chat_nll_change") -> None:
    """Recall (x) against the change of ``y`` (held-out chat NLL by default; lower keeps more)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for method in METHODS:
        pts = sorted((s for s in summary if s["method"] == method), key=lambda s: s["lr_scale"])
        if not pts:
            continue
        x = [100 * s["recall_same"] for s in pts]
        ys = [100 * s[y] for s in pts]
        ax.errorbar(x, ys, xerr=[100 * s["recall_same_std"] for s in pts], yerr=[100 * s[y + "_std"] for s in pts],
                    marker="o", capsize=3, label=method)
    ax.axhline(2.0, color="grey", ls=":", lw=1)
    ax.set_xlabel("recall of taught facts, teaching question (%)")
    ax.set_ylabel(f"held-out {y.split('_')[0]} NLL change vs base (%, lower keeps more)")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(bottom=-5)
    ax.set_title("Learn vs keep at matched learning effort")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(summary: list[dict]) -> None:
    print(f"\n{'method':28s} {'lr':>5s} {'recall':>8s} {'other':>8s} {'text NLL':>9s} {'chat NLL':>9s} "
          f"{'format':>7s} {'local':>6s} {'free':>5s}")
    for s in summary:
        print(f"{s['method']:28s} x{s['lr_scale']:<4} {100 * s['recall_same']:7.0f}% {100 * s['recall_other']:7.0f}% "
              f"{100 * s['text_nll_change']:+8.1f}% {100 * s['chat_nll_change']:+8.1f}% {s['format_vs_base']:6.2f}x "
              f"{100 * s['locality']:5.0f}% {s['free_share_min']:5.2f}")


def merge(paths: list[Path], out: Path) -> int:
    """One table, JSON and plot from several runs (each a learn_keep.json) of the same settings."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    keys = ("facts", "repeats", "replay", "neuron_fraction", "base", "quick", "base_mix", "anchors")
    settings = [{k: r["args"].get(k) for k in keys} for r in runs]
    for one in settings:  # runs written before the default base was recorded
        one["base"] = one["base"] or ("quick" if one["quick"] else "chat")
        one["base_mix"] = one["base_mix"] or {}
        one["anchors"] = one["anchors"] or {}
    if any(s != settings[0] for s in settings):
        raise SystemExit(f"--merge: runs with different settings cannot share a table: {settings}")
    rows = [row for r in runs for row in r["rows"]]
    summary = summarize(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learn_keep.json").write_text(json.dumps({"args": settings[0], "merged": [str(p) for p in paths],
                                                     "commands": [r["args"] for r in runs], "rows": rows,
                                                     "summary": summary}, indent=2))
    plot(summary, out / "learn_keep.png", y="chat_nll_change")
    print_table(summary)
    print(f"wrote {out / 'learn_keep.json'} and {out / 'learn_keep.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small base, 12 facts, one seed, no lr sweep")
    parser.add_argument("--facts", type=int, default=None)
    parser.add_argument("--base", choices=["quick", "chat"], default=None,
                        help="quick: a small base trained here; chat: the cached chat base (default without --quick)")
    parser.add_argument("--base-mix", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="pretraining settings of the base changed (e.g. n_world=200 world_share=0.7): a base "
                             "variant, pretrained once and cached")
    parser.add_argument("--anchors", nargs="+", default=[], metavar="KEY=VALUE",
                        help="anchor settings changed for every method with anchors (turns, per_step, weight, "
                             "near_share, top_k), e.g. turns=1024 weight=1.5")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--lr-scales", type=float, nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--repeats", type=int, default=8, help="steps per fact (the same for every method)")
    parser.add_argument("--replay", type=int, default=3, help="earlier facts replayed in each batch")
    parser.add_argument("--neuron-fraction", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=ROOT / "out")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="merge earlier runs' learn_keep.json (same base and settings, other methods or lr "
                             "scales) into one table, JSON and plot under --out; runs nothing")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    args.facts = args.facts or (12 if args.quick else 40)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.lr_scales = args.lr_scales or ([1.0] if args.quick else [0.5, 1.0, 2.0])
    torch.set_num_threads(1)
    args.base = args.base or ("quick" if args.quick else "chat")
    args.base_mix = parse_pretrain_settings(args.base_mix, "--base-mix")
    args.anchors = parse_anchors(args.anchors)
    for settings in METHODS.values():
        if settings.get("anchors") is not None:
            settings["anchors"] = {**settings["anchors"], **args.anchors}
    base = base_model(args.base, args.base_mix)
    state = {k: v.clone() for k, v in base.state_dict().items()}

    def make_model():
        import copy

        return copy.deepcopy(base)

    rows = []
    for seed in args.seeds:
        taught = {f.name for f in generate_facts(args.facts, seed=seed)}
        probe = RetentionProbe(seed=seed, n_people=16 if args.quick else 32, n_chat=16 if args.quick else 32,
                               text_bytes=8192 if args.quick else 16_384, exclude_names=taught)
        before = probe.measure(base)
        for method in args.methods:
            for scale in args.lr_scales:
                row = run_one(state, make_model, method, scale, seed, args, probe, before)
                rows.append(row)
                print(f"{method:28s} lr x{scale:<4} seed {seed}: recall {row['recall_same']:.0%} / other "
                      f"{row['recall_other']:.0%}, text NLL {100 * row['text_nll_change']:+.1f}%, chat NLL "
                      f"{100 * row['chat_nll_change']:+.1f}%, format {row['format_vs_base']:.2f}x, locality "
                      f"{row['locality']:.0%} ({row['learn_s']:.0f}s)", flush=True)
    summary = summarize(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learn_keep.json").write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v
                                                                     for k, v in vars(args).items()},
                                                            "rows": rows, "summary": summary}, indent=2))
    plot(summary, args.out / "learn_keep.png", y="chat_nll_change")
    print_table(summary)
    print(f"wrote {args.out / 'learn_keep.json'} and {args.out / 'learn_keep.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
