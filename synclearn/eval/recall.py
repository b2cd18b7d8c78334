"""Recall of taught facts, two ways: the generated answer, and the rank of the true answer.

* Exact match: a fresh conversation (no context: the fact can only come from the weights)
  asks the question with greedy decoding; recalled when the reply, stripped, equals the
  taught answer sentence.
* Ranking: the log-likelihood of each candidate answer (the fact's answer sentence with each
  value of its attribute, :meth:`synclearn.data.facts.Fact.candidates`) after the question,
  in the same chat layout a ChatSession uses (``<|bos|>`` opening a conversation); recalled
  when the true value scores highest. Chance is 1 / (number of candidates).

Both read the weights under the model's read lock, so they are safe while a learner is
attached (each measurement sees one weight version).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from synclearn.data.facts import Fact
from synclearn.learn.guard import guard_for


@dataclass
class Probe:
    """One probe of one fact.

    Attributes:
        exact: the reply equals the answer. ranked: the true value ranks first.
        rank: 0-based rank of the true value among the candidates. candidates: their number.
        reply: the generated reply. version: the weight version the reply was generated with.
    """

    exact: bool
    ranked: bool
    rank: int
    candidates: int
    reply: str
    version: int


def candidate_logprobs(model: Any, question: str, answers: list[str],
                       history: list[dict[str, str]] | None = None) -> torch.Tensor:
    """Summed log-probability of each answer (its tokens and the closing ``<|end|>``) after the
    question, asked in a new conversation or after the messages of ``history``. Returns [K] float."""
    tok = model.tokenizer
    bos = [tok.BOS] if getattr(tok, "BOS", None) is not None else []
    prompt = bos + tok.chat([*(history or []), {"role": "user", "content": question}])
    rows = [prompt + tok.encode(a) + [tok.END] for a in answers]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), tok.PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), T - 1)
    for k, r in enumerate(rows):
        ids[k, : len(r)] = torch.tensor(r)
        mask[k, len(prompt) - 1 : len(r) - 1] = 1.0  # targets are the answer tokens
    with torch.inference_mode(), guard_for(model).read():
        logits = model(ids[:, :-1].to(model.device)).float()  # [K, T-1, V]
    logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None].to(logits.device))[..., 0].cpu()  # [K, T-1]
    return (logp * mask).sum(1)


def probe_fact(model: Any, session: Any, fact: Fact, question: str, *, rank: bool = True) -> Probe:
    """Ask ``question`` in a fresh conversation of ``session`` (a ChatSession without a log) and
    score the reply; with ``rank``, also rank the candidate answers."""
    session.reset()
    reply = session.send(question)
    exact = reply.text.strip() == fact.answer()
    candidates = list(fact.candidates())
    position = 0
    if rank and len(candidates) > 1:
        scores = candidate_logprobs(model, question, [fact.answer(v) for v in candidates])
        true = scores[candidates.index(fact.value)]
        position = int((scores > true).sum())
    return Probe(exact, position == 0, position, len(candidates), reply.text, reply.versions[1])
