"""Base retention: what else learning moved, measured on the model before and after.

    probe = RetentionProbe(seed=0, exclude_names={"Kado"})
    before = probe.measure(model)          # on the base
    ...                                    # learn
    after = probe.measure(model)
    change = compare(before, after)        # relative NLL changes, format share vs base, locality

What :meth:`RetentionProbe.measure` returns (floats):

* ``text_nll``: mean NLL (nats per byte token) of held-out pretraining-style English: the
  last topics of Python's own documentation (``pydoc_data.topics``, shipped with every Python,
  in sorted-key order; the last ``text_share`` of them are never part of a pretraining mix
  here), cut into ``seq_len`` windows;
* ``chat_nll``: mean NLL of the replies of held-out chat turns (small talk and questions about
  random people, generated with a seed no pretraining or benchmark stream uses), and the same
  for each half, ``smalltalk_nll`` and ``people_nll``: which kind of turn moved;
* ``untaught_entropy``: mean entropy (nats) of the answer distribution over the asked
  attribute's values (ranked as in recall) on questions about people nobody taught. The base
  was pretrained on random values, so it is near ``log(10)``; a learner that taught "parrot"
  about everyone collapses it (the learned values leak to other names);
* ``smalltalk_exact``: share of held-out small-talk prompts whose greedy reply equals the
  reference reply (small-talk quality);
* ``format_share``: share of questions about people nobody taught whose greedy reply is a
  well-formed answer, ``It's <a value of the asked attribute>.``;
* ``replies``: those untaught-people replies themselves (for locality: :func:`compare` counts
  how many stayed the same).

Every pass reads the weights under the model's read lock, so it is safe with a learner attached.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from synclearn.data.facts import ATTRIBUTES, QUESTION_FORMS, Fact, generate_facts
from synclearn.data.smalltalk import smalltalk
from synclearn.eval.recall import candidate_logprobs
from synclearn.learn.guard import guard_for

HELDOUT_SEED = "retention-heldout"
_ANSWER = re.compile(r"^It's (.+)\.$")


def heldout_text(n_bytes: int = 16_384, text_share: float = 0.1) -> str:
    """Held-out English: the last ``text_share`` of ``pydoc_data.topics`` (sorted keys), at most
    ``n_bytes`` characters of it (ASCII-only lines, so one byte per character)."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    tail = keys[len(keys) - max(1, round(text_share * len(keys))):]
    lines = [line for k in tail for line in topics[k].splitlines() if line.strip() and line.isascii()]
    return "\n".join(lines)[:n_bytes]


def heldout_chat(n: int = 32, seed: int = 0) -> list[dict[str, str]]:
    """Held-out chat turns: small talk and questions about random people (random values), half each."""
    rng = random.Random(f"{HELDOUT_SEED}-chat-{seed}")
    turns = smalltalk(n - n // 2, seed=10_000 + seed)
    for fact in generate_facts(n // 2, seed=f"{HELDOUT_SEED}-people-{seed}"):
        turns.append({"prompt": fact.question(rng.randrange(len(QUESTION_FORMS))), "response": fact.answer()})
    return turns


@torch.no_grad()
def text_nll(model: Any, text: str, seq_len: int = 256, batch_size: int = 8) -> float:
    """Mean next-token NLL (nats per token) of ``text`` in windows of ``seq_len`` tokens."""
    ids = torch.tensor(model.tokenizer.encode(text), dtype=torch.long)
    n = max(1, (len(ids) - 1) // seq_len)
    total, count = 0.0, 0
    with guard_for(model).read():
        for start in range(0, n, batch_size):
            rows = [ids[i * seq_len : (i + 1) * seq_len + 1] for i in range(start, min(n, start + batch_size))]
            rows = [r for r in rows if len(r) >= 2]
            if not rows:
                continue
            T = min(len(r) for r in rows)
            x = torch.stack([r[:T] for r in rows]).to(model.device)
            logits = model(x[:, :-1]).float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                    reduction="sum")
            total, count = total + float(nll), count + x[:, 1:].numel()
    return total / max(count, 1)


@torch.no_grad()
def chat_nll(model: Any, turns: Iterable[dict[str, str]]) -> float:
    """Mean NLL (nats per token) of each turn's response (and its ``<|end|>``) after its prompt."""
    tok = model.tokenizer
    total, count = 0.0, 0
    with guard_for(model).read():
        for turn in turns:
            p, r = tok.turn(turn["prompt"], turn["response"])
            x = torch.tensor([p + r], dtype=torch.long, device=model.device)
            logp = model(x[:, :-1]).float().log_softmax(-1)[0, len(p) - 1 :]
            total -= float(logp.gather(-1, x[0, len(p) :, None]).sum())
            count += len(r)
    return total / max(count, 1)


def well_formed(reply: str, attribute: str) -> bool:
    """``It's <one of the attribute's values>.``"""
    m = _ANSWER.match(reply.strip())
    return bool(m) and m.group(1) in ATTRIBUTES[attribute]


@dataclass
class RetentionProbe:
    """A fixed set of held-out probes (same seed, same probes), measured on any model state.

    Args:
        seed: picks the held-out chat turns and the untaught people.
        n_people: questions about untaught people (answer format, locality).
        n_chat: held-out chat turns (chat NLL; the small-talk half also scores small-talk quality).
        text_bytes: bytes of held-out documentation text.
        exclude_names: names that were (or will be) taught, never asked about as "untaught".
        max_new_tokens: reply length of the greedy probes.
    """

    seed: int = 0
    n_people: int = 32
    n_chat: int = 32
    text_bytes: int = 16_384
    exclude_names: set[str] = field(default_factory=set)
    max_new_tokens: int = 24

    def __post_init__(self) -> None:
        from synclearn.data.facts import world_names

        self.text = heldout_text(self.text_bytes)
        self.chat = heldout_chat(self.n_chat, self.seed)
        self.smalltalk = self.chat[: self.n_chat - self.n_chat // 2]
        self.people_turns = self.chat[len(self.smalltalk):]
        exclude = frozenset(self.exclude_names) | world_names()
        rng = random.Random(f"{HELDOUT_SEED}-forms-{self.seed}")
        self.people = generate_facts(self.n_people, seed=f"{HELDOUT_SEED}-untaught-{self.seed}", exclude_names=exclude)
        self.questions = [(f.attribute, f.question(rng.randrange(len(QUESTION_FORMS)))) for f in self.people]

    def measure(self, model: Any) -> dict[str, Any]:
        """The measurements of the module docstring for ``model`` as it is now."""
        from synclearn.chat import ChatSession

        session = ChatSession(model, None, max_new_tokens=self.max_new_tokens)

        def ask(prompt: str) -> str:
            session.reset()
            return session.send(prompt).text

        replies = [ask(q) for _, q in self.questions]
        small = [ask(t["prompt"]).strip() == t["response"] for t in self.smalltalk]
        entropies = []
        for fact, (_, q) in zip(self.people, self.questions):  # the candidates recall ranks
            p = candidate_logprobs(model, q, [fact.answer(v) for v in fact.candidates()]).log_softmax(-1)
            entropies.append(float(-(p.exp() * p).sum()))
        return {"text_nll": text_nll(model, self.text), "chat_nll": chat_nll(model, self.chat),
                "smalltalk_nll": chat_nll(model, self.smalltalk), "people_nll": chat_nll(model, self.people_turns),
                "untaught_entropy": sum(entropies) / max(len(entropies), 1),
                "smalltalk_exact": sum(small) / max(len(small), 1),
                "format_share": sum(well_formed(r, a) for r, (a, _) in zip(replies, self.questions)) / max(len(replies), 1),
                "replies": replies}


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """How ``after`` differs from ``before``: relative NLL changes (+0.02 = 2% worse), the
    answer-format share, small-talk exact share and untaught-people entropy as fractions of the base's, and locality
    (share of untaught-people replies unchanged)."""
    def ratio(key: str) -> float:
        return after[key] / before[key] if before[key] > 0 else float("nan")

    same = [a == b for a, b in zip(before["replies"], after["replies"])]
    return {"text_nll_change": ratio("text_nll") - 1.0, "chat_nll_change": ratio("chat_nll") - 1.0,
            "smalltalk_nll_change": ratio("smalltalk_nll") - 1.0, "people_nll_change": ratio("people_nll") - 1.0,
            "untaught_entropy_vs_base": ratio("untaught_entropy"),
            "format_vs_base": ratio("format_share"), "smalltalk_vs_base": ratio("smalltalk_exact"),
            "locality": sum(same) / max(len(same), 1),
            "text_nll_before": before["text_nll"], "text_nll_after": after["text_nll"],
            "chat_nll_before": before["chat_nll"], "chat_nll_after": after["chat_nll"],
            "format_share_before": before["format_share"], "format_share_after": after["format_share"],
            "smalltalk_exact_before": before["smalltalk_exact"], "smalltalk_exact_after": after["smalltalk_exact"],
            "untaught_entropy_before": before["untaught_entropy"], "untaught_entropy_after": after["untaught_entropy"]}
