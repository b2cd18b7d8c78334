"""Base variants side by side: what a pretrained chat base knows and can bind, before any learning.

    python experiments/bench_base.py                                  # fixed vs gated decay, the default mix
    python experiments/bench_base.py --base-mix n_world=200 world_share=0.7   # a mix with a small, often-seen world
    python experiments/bench_base.py --variants fixed gated recall:recall_share=0.3

Each variant is ``mcsd-chat`` pretrained with some :class:`~synclearn.learn.pretrain.PretrainConfig`
fields changed (trained once, then read from the cache); ``--base-mix`` changes them for every
variant. Per variant, in one run:

* world recall: the share of 200 facts of the pretraining world (``world_facts``) whose true
  value ranks first among its attribute's values, asked with the first question form and with
  the others (what the base memorized, and whether it answers it however it is asked);
* in-context recall: 2-3 facts about different people stated in the conversation, one of
  them asked (``chat_mix.recall_turns``), the stated value ranked first: telling names apart
  across a conversation, which the fixed-decay mixer cannot do (about chance);
* held-out text and chat NLL (:class:`~synclearn.eval.retention.RetentionProbe`, seed 0), the
  final pretraining loss and its time (decode speed: ``bench_decode.py``);
* chance: the mean of 1 / (values of the asked attribute).

A learner's side of a variant is ``bench_learn_keep.py --base-mix ...``. Writes
``experiments/out/bench_base/bench_base.json``; prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from common import environment, parse_pretrain_settings, print_table, write_json  # noqa: E402

from synclearn.data.chat_mix import recall_turns  # noqa: E402
from synclearn.data.facts import ANSWER_FORM, ATTRIBUTES, QUESTION_FORMS, world_facts  # noqa: E402
from synclearn.eval.recall import candidate_logprobs  # noqa: E402
from synclearn.eval.retention import RetentionProbe  # noqa: E402

#: named variants: PretrainConfig fields changed from the default chat base
VARIANTS = {"fixed": {}, "gated": {"overrides": {"gated_decay": True}}}


def ranked_first(model, messages: list[dict[str, str]], values: tuple[str, ...], true: str) -> bool:
    """Whether ``true``'s answer sentence is the most likely of ``values``' after ``messages``."""
    scores = candidate_logprobs(model, messages[-1]["content"], [ANSWER_FORM.format(value=v) for v in values],
                                history=messages[:-1])
    return int(scores.argmax()) == values.index(true)


def world_recall(model, n_world: int, n: int = 200) -> dict[str, float]:
    facts = random.Random(0).sample(list(world_facts(n_world)), min(n, n_world))
    same = other = 0
    for k, fact in enumerate(facts):
        values = fact.candidates()
        same += ranked_first(model, [{"role": "user", "content": fact.question(0)}], values, fact.value)
        form = 1 + k % (len(QUESTION_FORMS) - 1)
        other += ranked_first(model, [{"role": "user", "content": fact.question(form)}], values, fact.value)
    return {"world_recall": same / len(facts), "world_recall_other": other / len(facts),
            "world_chance": sum(1 / len(f.candidates()) for f in facts) / len(facts)}


def in_context_recall(model, n: int = 200) -> float:
    rng = random.Random(123)
    hits = 0
    for _ in range(n):
        turns = recall_turns(rng)
        messages = []
        for t in turns[:-1]:
            messages += [{"role": "user", "content": t["prompt"]}, {"role": "assistant", "content": t["response"]}]
        messages.append({"role": "user", "content": turns[-1]["prompt"]})
        values = next(v for v in ATTRIBUTES.values() if turns[-1]["response"] in {ANSWER_FORM.format(value=x) for x in v})
        true = next(v for v in values if ANSWER_FORM.format(value=v) == turns[-1]["response"])
        hits += ranked_first(model, messages, values, true)
    return hits / n


def measure(name: str, mix: dict, probe: RetentionProbe) -> dict:
    from synclearn.learn.pretrain import PretrainConfig, cache_root, pretrained_model

    model = pretrained_model("mcsd-chat", threads=1, **mix).eval()
    meta = json.loads((cache_root() / PretrainConfig(**mix).key() / "pretrain.json").read_text())
    kept = probe.measure(model)
    row = {"variant": name, "settings": mix, "parameters": model.num_parameters(),
           "pretrain_loss": meta["last_loss"], "pretrain_s": meta["seconds"],
           **world_recall(model, mix.get("n_world", PretrainConfig().n_world)),
           "in_context_recall": in_context_recall(model),
           "text_nll": kept["text_nll"], "chat_nll": kept["chat_nll"]}
    print(f"{name}: world recall {row['world_recall']:.1%} (other forms {row['world_recall_other']:.1%}, chance "
          f"{row['world_chance']:.1%}), in-context {row['in_context_recall']:.1%}", flush=True)
    return row


def parse_variant(item: str) -> tuple[str, dict]:
    """``gated`` (a named variant) or ``NAME:FIELD=VALUE,FIELD=VALUE`` (PretrainConfig fields)."""
    name, sep, rest = item.partition(":")
    if not sep:
        if name not in VARIANTS:
            raise SystemExit(f"--variants {item!r}: expected one of {sorted(VARIANTS)} or NAME:FIELD=VALUE,...")
        return name, VARIANTS[name]
    return name, parse_pretrain_settings(rest.split(","), "--variants")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["fixed", "gated"], metavar="VARIANT")
    parser.add_argument("--base-mix", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="PretrainConfig fields changed for every variant (e.g. n_world=200 world_share=0.7)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench_base")
    args = parser.parse_args(argv)
    common = parse_pretrain_settings(args.base_mix, "--base-mix")
    variants = [parse_variant(v) for v in args.variants]
    torch.set_num_threads(1)
    probe = RetentionProbe(seed=0, n_people=32, n_chat=32, text_bytes=16_384)
    rows = []
    for name, mix in variants:
        overrides = {**common.get("overrides", {}), **mix.get("overrides", {})}
        rows.append(measure(name, {**common, **mix, **({"overrides": overrides} if overrides else {})}, probe))
    print_table(rows, ["variant", "parameters", "pretrain_loss", "world_recall", "world_recall_other", "world_chance",
                       "in_context_recall", "text_nll", "chat_nll", "pretrain_s"])
    path = write_json(args.out / "bench_base.json", {"base_mix": common, "rows": rows, "environment": environment()})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
