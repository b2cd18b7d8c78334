"""A small classifier built from the same selectable-neuron layers as the language model.

``x [B, d_in] -> Linear -> N x (x + SelectableMLP(RMSNorm(x))) -> RMSNorm -> head [B, n_classes]``.
It has the learner-facing surface of :class:`~synclearn.model.mcsd.MCSDLM` (``neuron_layouts``,
``lora_targets``, ``mlps``, ``device``), so the same :class:`~synclearn.learn.Learner` -- sparse,
LoRA or full -- trains it with :class:`~synclearn.learn.batch.LabelBatch` batches. Used by the
split-digits continual-learning benchmark.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from synclearn.model.neurons import NeuronLayout, SelectableMLP


class SelectableClassifier(nn.Module):
    """Args: d_in, d_model, d_ff, n_layers, n_classes: the shape; seed: initialization."""

    lora_targets = ("proj_in", "up", "down", "head")

    def __init__(self, d_in: int = 64, d_model: int = 64, d_ff: int = 256, n_layers: int = 2, n_classes: int = 10,
                 seed: int = 0) -> None:
        super().__init__()
        bad = [f"{n}={v!r}" for n, v in (("d_in", d_in), ("d_model", d_model), ("d_ff", d_ff), ("n_layers", n_layers),
                                          ("n_classes", n_classes)) if not isinstance(v, int) or v < 1]
        if bad:
            raise ValueError(f"invalid SelectableClassifier shape: {', '.join(bad)} (expected positive integers)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.proj_in = nn.Linear(d_in, d_model)
            self.norms = nn.ModuleList(nn.RMSNorm(d_model) for _ in range(n_layers))
            self.blocks = nn.ModuleList(SelectableMLP(d_model, d_ff, 0, i) for i in range(n_layers))
            self.norm = nn.RMSNorm(d_model)
            self.head = nn.Linear(d_model, n_classes)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def mlps(self) -> list[SelectableMLP]:
        return list(self.blocks)

    def neuron_layouts(self) -> list[NeuronLayout]:
        return [m.layout() for m in self.blocks]

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, d_in] -> logits [B, n_classes]."""
        h = self.proj_in(x)
        for norm, mlp in zip(self.norms, self.blocks):
            h = h + mlp(norm(h))
        return self.head(self.norm(h))
