"""Examples -> a padded training batch with a loss mask over the response tokens.

An example is ``{"prompt": str, "response": str}`` (optionally ``"id"``: the interaction id,
and ``"weight"``: a finite number >= 0 scaling its loss), a plain ``str`` (every token
after the first is a target), or an anchor ``{"anchor": k}`` (:mod:`synclearn.learn.anchors`:
no target of its own; the loss adds the KL from the predictions recorded for it). Prompts are wrapped in the chat template, so what the model
learns is what it will be asked in chat. Too-long examples keep their last ``max_seq_len``
tokens (the response end is what matters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

EXAMPLE_KEYS = {"prompt", "response", "id", "weight"}


class LearnerInputError(ValueError):
    """An example is malformed; nothing was learned from the batch."""


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32, or float64 when it already is (losses of a float64 model stay float64)."""
    return t if t.dtype == torch.float64 else t.float()


@dataclass
class Batch:
    """A language-modelling batch. Shapes: inputs/targets/mask [B, T]; weights [B].

    Every batch the Learner takes has ``inputs`` (what the model is called on), ``mask``
    (which positions count when recording activations; None = all), ``weights``, ``ids``,
    ``tokens``, ``loss(logits) -> (loss, per-example loss)`` and ``reproduced(logits)`` (per
    example: does the model already give the target); :class:`LabelBatch` is the
    classification counterpart.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    weights: Tensor
    ids: list[int | None]
    anchors: Any = None  # AnchorRows of the anchor examples, or None

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())

    def loss(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        return masked_loss(logits, self)

    def reproduced(self, logits: Tensor) -> Tensor:
        """[B] bool: every response token of the example is the model's most likely next token
        (teacher-forced), i.e. greedy decoding of its prompt reproduces its response."""
        hit = (logits.detach().argmax(-1) == self.targets) | (self.mask == 0)
        return hit.all(1)


@dataclass
class LabelBatch:
    """A classification batch: inputs [B, ...], labels [B] int64, weights [B].

    ``allowed`` [C] or [B, C] bool optionally restricts the classes the loss competes over (a
    task-incremental head; one row per example when a batch mixes tasks, e.g. with replay);
    logits outside it are masked out.
    """

    inputs: Tensor
    labels: Tensor
    weights: Tensor | None = None
    allowed: Tensor | None = None
    ids: list[int | None] | None = None
    mask = None  # every row counts when recording activations

    def __post_init__(self) -> None:
        if self.weights is None:
            self.weights = torch.ones(len(self.labels), device=self.labels.device)
        if self.ids is None:
            self.ids = [None] * len(self.labels)

    @property
    def tokens(self) -> int:
        return len(self.labels)

    def loss(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        logits = at_least_float32(logits)
        if self.allowed is not None:
            logits = logits.masked_fill(~self.allowed.to(logits.device), float("-inf"))
        ce = torch.nn.functional.cross_entropy(logits, self.labels, reduction="none")  # [B]
        denom = self.weights.abs().sum()
        if denom <= 0:
            raise LearnerInputError("the batch has no weighted examples (all weights are 0)")
        return (ce * self.weights).sum() / denom, ce.detach()

    def reproduced(self, logits: Tensor) -> Tensor:
        """[B] bool: the example's label is the top logit (among the allowed classes)."""
        logits = logits.detach()
        if self.allowed is not None:
            logits = logits.masked_fill(~self.allowed.to(logits.device), float("-inf"))
        return logits.argmax(-1) == self.labels


def encode_example(tokenizer: Any, example: Any, index: int) -> tuple[list[int], list[float], float, int | None]:
    """(token ids, per-token loss flags for the next-token targets, weight, id)."""
    if isinstance(example, str):
        ids = tokenizer.encode(example, bos=True)
        return ids, [1.0] * (len(ids) - 1), 1.0, None
    if not isinstance(example, dict):
        raise LearnerInputError(f"example {index}: expected a dict with prompt/response or a str, got {type(example).__name__}")
    unknown = sorted(set(example) - EXAMPLE_KEYS)
    if unknown:
        raise LearnerInputError(f"example {index}: unknown keys {unknown}; accepted: {sorted(EXAMPLE_KEYS)}")
    prompt, response = example.get("prompt"), example.get("response")
    for name, value in (("prompt", prompt), ("response", response)):
        if not isinstance(value, str):
            raise LearnerInputError(f"example {index}: {name} must be str, got {type(value).__name__}")
    if not response:
        raise LearnerInputError(f"example {index}: response is empty, there is nothing to learn")
    weight = example.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise LearnerInputError(f"example {index}: weight={weight!r} (expected a finite number >= 0)")
    rid = example.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, int)):
        raise LearnerInputError(f"example {index}: id={rid!r} (expected an int)")
    try:
        p, r = tokenizer.turn(prompt, response)
    except UnicodeEncodeError as err:
        raise LearnerInputError(f"example {index}: text is not valid Unicode ({err.reason})") from None
    ids = p + r
    flags = [0.0] * (len(p) - 1) + [1.0] * len(r)  # target j is ids[j + 1]
    return ids, flags, float(weight), rid


def _encode_anchor(anchors: Any, example: dict, index: int, max_seq_len: int) -> tuple[list[int], list[float], float, None]:
    if anchors is None:
        raise LearnerInputError(f"example {index}: an anchor example needs a learner with anchors (set_anchors)")
    if set(example) != {"anchor"}:
        raise LearnerInputError(f"example {index}: an anchor example is exactly {{'anchor': k}}, got keys {sorted(example)}")
    try:
        ids, counted, _, _ = anchors.encode(example["anchor"], max_seq_len)
    except IndexError as err:
        raise LearnerInputError(f"example {index}: {err}") from None
    return ids, [0.0] * len(counted), 1.0, None


def build_batch(tokenizer: Any, examples: Sequence[Any], *, max_seq_len: int, pad_id: int, device: torch.device,
                anchors: Any = None) -> Batch:
    """Validate every example first (one bad example rejects the batch), then pad on the right.
    ``anchors``: the :class:`~synclearn.learn.anchors.AnchorSet` that ``{"anchor": k}`` examples index."""
    if isinstance(examples, (str, dict)) or not isinstance(examples, Sequence) or not examples:
        raise LearnerInputError("examples must be a non-empty list of examples")
    anchored = [i for i, ex in enumerate(examples) if isinstance(ex, dict) and "anchor" in ex]
    encoded = [_encode_anchor(anchors, ex, i, max_seq_len) if i in anchored else encode_example(tokenizer, ex, i)
               for i, ex in enumerate(examples)]
    if len(anchored) == len(examples):
        raise LearnerInputError("the batch holds only anchor examples; there is nothing to learn")
    rows = []
    for ids, flags, _, _ in encoded:
        if len(ids) > max_seq_len + 1:
            cut = len(ids) - (max_seq_len + 1)
            ids, flags = ids[cut:], flags[cut:]
        rows.append((ids, flags))
    T = max(len(ids) for ids, _ in rows) - 1
    if T < 1:
        raise LearnerInputError("every example is a single token; nothing to predict")
    inputs = torch.full((len(rows), T), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T)
    for b, (ids, flags) in enumerate(rows):
        n = len(ids) - 1
        inputs[b, :n] = torch.tensor(ids[:-1])
        targets[b, :n] = torch.tensor(ids[1:])
        mask[b, :n] = torch.tensor(flags)
    weights = torch.tensor([w for _, _, w, _ in encoded])
    anchor_rows = None
    if anchored:
        anchor_rows = anchors.rows(anchored, [examples[i]["anchor"] for i in anchored], T, max_seq_len, device)
    return Batch(inputs.to(device), targets.to(device), mask.to(device), weights.to(device), [e[3] for e in encoded],
                 anchor_rows)


def masked_loss(logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """Weighted mean cross-entropy over the masked targets (plus the anchors' weighted KL term,
    :class:`~synclearn.learn.anchors.AnchorRows`), and each example's own mean cross-entropy.

    Args:
        logits: [B, T, V].

    Returns:
        (scalar loss with grad, [B] detached per-example mean loss over its response tokens).
    """
    ce = torch.nn.functional.cross_entropy(at_least_float32(logits).transpose(1, 2), batch.targets, reduction="none")  # [B, T]
    per_token = batch.mask * batch.weights[:, None]
    denom = (batch.mask * batch.weights.abs()[:, None]).sum()  # negative weights: unlearning
    if denom <= 0:
        raise LearnerInputError("the batch has no weighted response tokens (all weights are 0)")
    per_example = (ce.detach() * batch.mask).sum(1) / batch.mask.sum(1).clamp(min=1)
    loss = (ce * per_token).sum() / denom
    anchors = getattr(batch, "anchors", None)
    if anchors is not None and anchors.weight > 0:
        loss = loss + anchors.weight * anchors.kl(logits)
    return loss, per_example
