"""Anchors: what the model predicted on ordinary input before it learned, kept while it learns.

    anchors = AnchorSet.build(model, anchor_turns(128, seed=0))   # the base's predictions, once
    learner.set_anchors(anchors)
    learner.step(new_examples + anchors.draw(step))               # + weight * KL to the base

A step that teaches "What is Kado's pet?" -> "It's a parrot." can also teach "parrot" about
everyone (the answer distribution for people nobody taught shifts) or wear down small talk:
the neurons it changes serve other inputs too. Anchors hold those other inputs in place
(distillation toward the model's earlier self: learning without forgetting, Li & Hoiem 2016;
pseudo-rehearsal, Robins 1995). An :class:`AnchorSet` is a fixed set of pretraining-style
turns with the model's next-token distribution at every reply token recorded once, when the set
is built: its ``top_k`` most likely tokens and the mass of all the others. A learning batch
takes ``per_step`` of them as examples ``{"anchor": k}``, and the loss gains

    weight * mean over anchor tokens t of KL(p_then(. | t) || p_now(. | t))

on the coarsened distributions (the ``top_k`` tokens plus one bucket for the rest). The KL of
the coarsened distributions is exact for that partition and at most the full KL; it is 0 exactly
when the model still gives each recorded token, and the rest together, the probability it gave
them then.

Anchor rows do not count when a sparse step picks its neurons (their loss mask is 0): the step
still changes the neurons the new input activated, and the KL term reaches only those, keeping
them from moving the recorded predictions. Because anchors enter a batch as examples, a
journaled step records which anchors it used and an exact forget re-runs it bitwise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from synclearn.learn.guard import guard_for

ANCHOR_SEED = "anchors"


def anchor_turns(n: int, seed: int = 0, *, text_share: float = 0.25, smalltalk_share: float = 0.25,
                 text_chars: int = 64) -> list[Any]:
    """``n`` pretraining-style inputs: questions about made-up people with their answers (the
    rest), small-talk turns (``smalltalk_share``) and windows of the built-in text
    (``text_share``, plain strings of ``text_chars`` characters). Deterministic in ``seed``;
    the people are drawn with a seed no benchmark or held-out probe uses."""
    from synclearn.data.builtin import builtin_text
    from synclearn.data.facts import QUESTION_FORMS, generate_facts
    from synclearn.data.smalltalk import smalltalk

    if n < 1:
        raise ValueError(f"anchor_turns: n={n!r} (expected >= 1)")
    rng = random.Random(f"{ANCHOR_SEED}-{seed}")
    n_text, n_small = round(text_share * n), round(smalltalk_share * n)
    n_people = n - n_text - n_small
    text = builtin_text()
    windows = [text[s : s + text_chars] for s in (rng.randrange(max(1, len(text) - text_chars)) for _ in range(n_text))]
    people = [{"prompt": f.question(rng.randrange(len(QUESTION_FORMS))), "response": f.answer()}
              for f in generate_facts(n_people, seed=f"{ANCHOR_SEED}-people-{seed}")]
    items: list[Any] = [*people, *smalltalk(n_small, seed=f"{ANCHOR_SEED}-{seed}"), *windows]
    rng.shuffle(items)
    return items


def coarsened(top: Tensor) -> Tensor:
    """Log-probabilities of the ``k`` recorded tokens [..., k] -> [..., k + 1]: those, then the log of
    the mass of every other token (the "rest" bucket)."""
    rest = torch.log1p(-top.exp().sum(-1).clamp(max=1.0 - 1e-6))
    return torch.cat([top, rest[..., None]], -1)


@dataclass
class AnchorRows:
    """The anchor part of a batch: batch rows ``rows`` [A] hold anchors; per row and target
    position, ``counted`` [A, T] (which positions carry a recorded distribution), ``idx`` [A, T, k]
    (the recorded tokens) and ``logp`` [A, T, k + 1] (their log-probabilities, then the rest's)."""

    rows: Tensor
    counted: Tensor
    idx: Tensor
    logp: Tensor
    weight: float

    def kl(self, logits: Tensor) -> Tensor:
        """Mean coarsened KL(recorded || now) over the counted positions; ``logits`` [B, T, V]."""
        lp = logits[self.rows].float().log_softmax(-1)  # [A, T, V]
        now = coarsened(lp.gather(-1, self.idx))  # [A, T, k + 1]
        then = self.logp
        kl = (then.exp() * (then - now)).sum(-1)  # [A, T]
        return (kl * self.counted).sum() / self.counted.sum().clamp(min=1)


class AnchorSet:
    """Recorded predictions on a fixed set of inputs (see the module docstring).

    Args:
        tokens: per anchor, its token ids.
        counted: per anchor, per target position j (predicting ``tokens[j + 1]``), whether it counts.
        idx, logp: per anchor, [n - 1, k] recorded tokens and [n - 1, k + 1] log-probabilities.
        per_step: anchors a learning batch takes (:meth:`draw`).
        weight: the KL term's weight in the loss.
        near_share: share of a batch's anchors chosen for being like its prompts (the rest at random).
        seed: seeds the draws.
    """

    def __init__(self, tokens: Sequence[Sequence[int]], counted: Sequence[Tensor], idx: Sequence[Tensor],
                 logp: Sequence[Tensor], *, per_step: int = 4, weight: float = 1.0, near_share: float = 0.5,
                 seed: int = 0) -> None:
        if not tokens:
            raise ValueError("an AnchorSet needs at least one anchor")
        errors = anchor_settings_errors({"turns": len(tokens), "per_step": per_step, "weight": weight,
                                         "near_share": near_share})
        if errors:
            raise ValueError("invalid AnchorSet settings: " + "; ".join(errors))
        self.tokens = [list(map(int, t)) for t in tokens]
        self.counted, self.idx, self.logp = list(counted), list(idx), list(logp)
        self.per_step, self.weight, self.seed, self.near_share = per_step, float(weight), int(seed), float(near_share)
        # what an anchor is "about": its prompt (the tokens before its first counted target), or all of a text
        self._keys = []
        for ids, c in zip(self.tokens, self.counted):
            first = int(c.nonzero()[0]) if c.any() else len(ids)
            self._keys.append(ngrams(ids[: first + 1] if first > 0 else ids))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def top_k(self) -> int:
        return int(self.idx[0].shape[-1])

    @classmethod
    @torch.no_grad()
    def build(cls, model: Any, items: Sequence[Any], *, top_k: int = 16, max_len: int = 128, **options: Any) -> "AnchorSet":
        """Record ``model``'s predictions on ``items`` (``{"prompt", "response"}`` turns, whose
        reply tokens count, or plain strings, whose every token after the first counts), under
        its read lock. Each item keeps its last ``max_len`` tokens."""
        errors = anchor_settings_errors({"top_k": top_k})
        if errors:
            raise ValueError("invalid AnchorSet settings: " + "; ".join(errors))
        tok = model.tokenizer
        tokens, counted, idx, logp = [], [], [], []
        with guard_for(model).read():
            for item in items:
                if isinstance(item, str):
                    ids = tok.encode(item, bos=True)
                    flags = [1.0] * (len(ids) - 1)
                else:
                    p, r = tok.turn(item["prompt"], item["response"])
                    ids, flags = p + r, [0.0] * (len(p) - 1) + [1.0] * len(r)
                ids, flags = ids[-max_len:], flags[-(max_len - 1):]
                if len(ids) < 2 or not any(flags):
                    continue
                x = torch.tensor([ids[:-1]], dtype=torch.long, device=model.device)
                lp = model(x).float().log_softmax(-1)[0]  # [n - 1, V]
                top, where = lp.topk(min(top_k, lp.shape[-1]), dim=-1)
                tokens.append(ids)
                counted.append(torch.tensor(flags))
                idx.append(where.cpu())
                logp.append(coarsened(top).cpu())
        return cls(tokens, counted, idx, logp, **options)

    def draw(self, step: int, near: Sequence[Sequence[int]] = ()) -> list[dict[str, int]]:
        """The ``per_step`` anchors of learning step ``step``: with ``near`` (the token ids of the
        batch's prompts), ``near_share`` of them are the anchors whose prompts are most like those
        (:func:`ngram_similarity`: the inputs a step is most likely to move), the rest drawn at
        random. Deterministic in seed, step and ``near``."""
        rng = random.Random(f"{ANCHOR_SEED}-draw-{self.seed}-{step}")
        chosen: list[int] = []
        n_near = round(self.near_share * self.per_step) if near else 0
        if n_near:
            grams = [ngrams(t) for t in near]
            score = [max(ngram_similarity(g, key) for g in grams) for key in self._keys]
            chosen = sorted(range(len(self)), key=lambda k: (-score[k], k))[:n_near]
        rest = [k for k in range(len(self)) if k not in set(chosen)]
        chosen += rng.sample(rest, self.per_step - len(chosen))
        return [{"anchor": k} for k in sorted(chosen)]

    def draw_for(self, step: int, examples: Sequence[dict], tokenizer: Any) -> list[dict[str, int]]:
        """:meth:`draw` near the prompts of ``examples`` (``{"prompt", ...}`` dicts)."""
        return self.draw(step, near=[tokenizer.encode(ex["prompt"]) for ex in examples])

    def encode(self, k: int, max_seq_len: int) -> tuple[list[int], Tensor, Tensor, Tensor]:
        """(token ids, counted [n - 1], idx [n - 1, k], logp [n - 1, k + 1]) of anchor ``k``, its
        last ``max_seq_len + 1`` tokens."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(self):
            raise IndexError(f"anchor {k!r} (this set holds anchors 0..{len(self) - 1})")
        ids, cut = self.tokens[k], max(0, len(self.tokens[k]) - (max_seq_len + 1))
        return ids[cut:], self.counted[k][cut:], self.idx[k][cut:], self.logp[k][cut:]

    def rows(self, batch_rows: Sequence[int], anchors: Sequence[int], T: int, max_seq_len: int,
             device: torch.device) -> AnchorRows:
        """The :class:`AnchorRows` of anchors ``anchors`` placed in batch rows ``batch_rows`` of a
        batch with ``T`` target positions."""
        A, k = len(anchors), self.top_k
        counted = torch.zeros(A, T)
        idx = torch.zeros(A, T, k, dtype=torch.long)
        logp = torch.zeros(A, T, k + 1)
        for a, anchor in enumerate(anchors):
            _, c, i, lp = self.encode(anchor, max_seq_len)
            n = len(c)
            counted[a, :n], idx[a, :n], logp[a, :n] = c, i, lp
        return AnchorRows(torch.tensor(list(batch_rows), dtype=torch.long, device=device), counted.to(device),
                          idx.to(device), logp.to(device), self.weight)

    @torch.no_grad()
    def drift(self, model: Any, batch_size: int = 16) -> float:
        """Mean coarsened KL (nats per counted token) of ``model``'s predictions now from the
        recorded ones, over every anchor (0 on the model they were recorded on): how far the
        model moved on ordinary input."""
        total, count = 0.0, 0.0
        with guard_for(model).read():
            for start in range(0, len(self), batch_size):
                ks = list(range(start, min(len(self), start + batch_size)))
                T = max(len(self.tokens[k]) for k in ks) - 1
                pad = getattr(model.tokenizer, "PAD", 0) or 0
                x = torch.full((len(ks), T), pad, dtype=torch.long)
                for a, k in enumerate(ks):
                    x[a, : len(self.tokens[k]) - 1] = torch.tensor(self.tokens[k][:-1])
                part = self.rows(range(len(ks)), ks, T, max_seq_len=T, device=model.device)
                n = float(part.counted.sum())
                total, count = total + float(part.kl(model(x.to(model.device)))) * n, count + n
        return total / max(count, 1.0)

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"tokens": [list(t) for t in self.tokens], "counted": list(self.counted), "idx": list(self.idx),
                "logp": list(self.logp), "per_step": self.per_step, "weight": self.weight, "seed": self.seed,
                "near_share": self.near_share}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "AnchorSet":
        return cls(state["tokens"], state["counted"], state["idx"], state["logp"], per_step=int(state["per_step"]),
                   weight=float(state["weight"]), seed=int(state["seed"]), near_share=float(state.get("near_share", 0.5)))


def ngrams(ids: Sequence[int], n: int = 3) -> frozenset:
    """The token 1..n-grams of ``ids``."""
    ids = tuple(int(i) for i in ids)
    return frozenset(ids[i : i + k] for k in range(1, n + 1) for i in range(len(ids) - k + 1))


def ngram_similarity(a: frozenset, b: frozenset) -> float:
    """Jaccard similarity of two n-gram sets (0 when both are empty)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


ANCHOR_SETTINGS = {"turns": 128, "per_step": 4, "weight": 1.0, "near_share": 0.5, "top_k": 16}


def anchor_settings_errors(settings: dict[str, Any]) -> list[str]:
    """What is wrong with anchor settings (the keys of :data:`ANCHOR_SETTINGS`), one line each."""
    errors = [f"{k}: unknown (expected some of {sorted(ANCHOR_SETTINGS)})" for k in sorted(set(settings) - set(ANCHOR_SETTINGS))]
    s = {**ANCHOR_SETTINGS, **settings}

    def integer(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not integer(s["turns"]) or s["turns"] < 1:
        errors.append(f"turns={s['turns']!r} (expected a positive integer)")
    elif not integer(s["per_step"]) or not 0 <= s["per_step"] <= s["turns"]:
        errors.append(f"per_step={s['per_step']!r} (expected an integer in [0, turns={s['turns']}])")
    if not integer(s["top_k"]) or s["top_k"] < 1:
        errors.append(f"top_k={s['top_k']!r} (expected a positive integer)")
    for key, ok in (("weight", lambda v: v >= 0), ("near_share", lambda v: 0 <= v <= 1)):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
            errors.append(f"{key}={v!r} (expected {'>= 0' if key == 'weight' else 'in [0, 1]'})")
    return errors


def is_anchor(example: Any) -> bool:
    """Whether ``example`` is an anchor example ``{"anchor": k}``."""
    return isinstance(example, dict) and "anchor" in example
