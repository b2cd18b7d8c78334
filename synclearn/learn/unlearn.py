"""Approximate unlearning and the measurements every forget request reports.

* :func:`mean_nll`: mean per-token NLL of responses, read under the read lock;
* :func:`shuffled_controls`: never-seen controls (each response with its words shuffled);
* :func:`unlearn`: gradient difference on a fork of the learner -- ascend on the forgotten
  records' mean loss, descend on ``retain_weight`` x the retained records' mean loss -- until
  the forgotten likelihood falls to the never-seen level (re-measured every step: it moves as
  the model changes) or a step budget runs out.

:mod:`synclearn.learn.forget` calls these; the fork is swapped in under one write lock there.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Sequence

import torch

from synclearn.learn.batch import build_batch, masked_loss

logger = logging.getLogger(__name__)


def mean_nll(learner: Any, examples: Sequence[dict]) -> float | None:
    """Mean over examples of the per-token NLL of their responses (read under the read lock);
    None when no example has a response."""
    examples = [{"prompt": e["prompt"], "response": e["response"]} for e in examples if e.get("response")]
    if not examples:
        return None
    batch = build_batch(learner.model.tokenizer, examples, max_seq_len=learner.max_seq_len,
                        pad_id=learner.pad_id, device=learner.model.device)
    with torch.no_grad(), learner.guard.read():
        _, per_example = masked_loss(learner.model(batch.inputs), batch)
    return float(per_example.mean())


def shuffled_controls(examples: Sequence[dict], seed: int = 0) -> list[dict]:
    """Never-seen controls: each response with its words in a seeded random order."""
    rng = random.Random(seed)
    out = []
    for e in examples:
        words = e["response"].split()
        for _ in range(5):
            rng.shuffle(words)
            if " ".join(words) != e["response"] or len(words) < 2:
                break
        out.append({"prompt": e["prompt"], "response": " ".join(words)})
    return out


def unlearn(aside: Any, examples: list[dict], retained: list[dict], *, max_steps: int, lr: float | None,
            seed: int, retain_weight: float) -> tuple[int, float | None]:
    """Gradient difference on ``aside`` (a fork; see module docstring). Returns (committed
    unlearning steps, the never-seen NLL level at the end, or None when nothing was measurable)."""
    forget_set = [{"prompt": e["prompt"], "response": e["response"]} for e in examples if e.get("response")]
    retain_set = [{"prompt": e["prompt"], "response": e["response"]} for e in retained if e.get("response")]
    if not forget_set:
        logger.info("approximate forget: the records have no response text; nothing to unlearn")
        return 0, None
    controls = shuffled_controls(forget_set, seed)
    saved_lr = aside.lr
    if lr is not None:
        aside.set_lr(lr)
    try:
        steps, target = _ascend(aside, forget_set, retain_set, controls, max_steps, retain_weight)
    finally:
        aside.set_lr(saved_lr)  # the fork's optimizer state is adopted: it must keep the learner's lr
    return steps, target


def _ascend(aside: Any, forget_set: list[dict], retain_set: list[dict], controls: list[dict], max_steps: int,
            retain_weight: float) -> tuple[int, float | None]:
    steps, target = 0, None
    for _ in range(max_steps):
        current, target = mean_nll(aside, forget_set), mean_nll(aside, controls)
        if current is None or target is None or current >= target:
            break
        batch = build_batch(aside.model.tokenizer, forget_set + retain_set, max_seq_len=aside.max_seq_len,
                            pad_id=aside.pad_id, device=aside.model.device)
        # each set weighted as a whole: -mean loss of the forgotten, +retain_weight x mean of the retained
        batch.weights[: len(forget_set)] = -1.0 / len(forget_set)
        batch.weights[len(forget_set) :] = retain_weight / max(1, len(retain_set))
        result = aside.step_batch(batch, record=False)
        steps += 0 if result.skipped else 1
    return steps, target


def retained_examples(learner: Any, forgotten: set[int], k: int) -> list[dict]:
    """Up to ``k`` remembered examples: the latest journaled ones, else the latest log rows."""
    out: list[dict] = []
    if learner.journal is not None:
        for index in reversed(learner.journal.indices):
            for e in learner.journal.load(index).examples:
                if isinstance(e, dict) and "prompt" in e and e.get("id") not in forgotten and len(out) < k:
                    out.append(e)
            if len(out) >= k:
                break
    if not out and learner.log is not None:  # learned rows first, else any remaining rows
        keep = [i for i in learner.log.ids(learned=True) if i not in forgotten][-k:]
        keep = keep or [i for i in learner.log.ids() if i not in forgotten][-k:]
        out = [{"id": r["id"], "prompt": r["prompt"], "response": r["response"]} for r in learner.log.get_many(keep)]
    return out
