"""The sparse update engine: gradients for the selected neurons only, written back in place.

For each plastic layer, the selected neurons' weights are gathered into small leaf tensors
(one [k, D] per input matrix, one [D, k] for the output columns). The layer then computes::

    h      = act(x W_in^T ...)      with the selected columns zeroed      (frozen weights)
    h_sel  = act(x R^T ...)         from the leaves R                      (k neurons)
    out    = h W_out^T + h_sel C^T  from the leaf C

which equals the dense layer (the leaves are copies), but autograd only ever creates
gradients of shape [k, D] -- never d_ff x D. Base weights have ``requires_grad=False``, so the
autograd graph starts at the first plastic layer and backward stops there by itself.

After the optimizer step the new slices are written back with ``index_copy_`` (the caller
holds the model's write lock); every other element of every weight is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from synclearn.model.neurons import NeuronLayout, NeuronTrace, neuron_context


@dataclass
class PlasticSlice:
    """The gathered, trainable copy of ``idx``'s neurons in one layer.

    Attributes:
        layer: layer index.
        idx: [k] selected neuron indices (sorted).
        rows: one [k, D] leaf per input matrix of the layout.
        col: [D, k] leaf, the output columns.
    """

    layer: int
    idx: Tensor
    rows: tuple[Tensor, ...]
    col: Tensor

    @property
    def leaves(self) -> list[Tensor]:
        return [*self.rows, self.col]

    def flat(self) -> Tensor:
        """[k, width]: each neuron's rows then its column, concatenated (fp32 or fp64)."""
        return _flat([r.detach() for r in self.rows], self.col.detach())

    @staticmethod
    def flat_grads(grads: list[Tensor]) -> Tensor:
        """The gradients of ``leaves`` (same order) in the :meth:`flat` layout."""
        *rows, col = grads
        return _flat(rows, col)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.leaves)


def _flat(rows: list[Tensor], col: Tensor) -> Tensor:
    dt = torch.float64 if col.dtype == torch.float64 else torch.float32  # optimizer math in >= fp32
    return torch.cat([*(r.to(dt) for r in rows), col.to(dt).t()], dim=1)


def gather_slice(layout: NeuronLayout, layer: int, idx: Tensor) -> PlasticSlice:
    """Copy the selected neurons' weights into fresh leaf tensors that require grad."""
    idx = idx.to(layout.out_weight.device)
    rows = tuple(w.detach().index_select(0, idx).clone().requires_grad_(True) for w in layout.in_weights)
    col = layout.out_weight.detach().index_select(1, idx).clone().requires_grad_(True)
    return PlasticSlice(layer, idx, rows, col)


def plastic_forward(x: Tensor, layout: NeuronLayout, sl: PlasticSlice) -> Tensor:
    """The layer's output with ``sl``'s neurons computed from the leaves. x: [..., D] -> [..., D]."""
    pre = (F.linear(x, w.detach(), layout.in_bias(j)) for j, w in enumerate(layout.in_weights))
    h = layout.act(*pre)  # [..., d_ff], frozen path
    h = h.index_fill(-1, sl.idx, 0.0)
    h_sel = layout.act(*(F.linear(x, r, layout.in_bias(j, sl.idx)) for j, r in enumerate(sl.rows)))  # [..., k]
    return F.linear(h, layout.out_weight.detach(), layout.out_bias) + F.linear(h_sel, sl.col)


@torch.no_grad()
def write_back(layout: NeuronLayout, idx: Tensor, flat: Tensor) -> None:
    """Write ``flat`` [k, width] (the :meth:`PlasticSlice.flat` layout) into the weights.
    Caller holds the write lock."""
    d = layout.out_weight.shape[0]
    idx = idx.to(layout.out_weight.device)
    parts = flat.split([w.shape[1] for w in layout.in_weights] + [d], dim=1)
    for w, part in zip(layout.in_weights, parts):
        w.index_copy_(0, idx, part.to(w.dtype))
    layout.out_weight.index_copy_(1, idx, parts[-1].t().to(layout.out_weight.dtype))


@torch.no_grad()
def read_rows(layout: NeuronLayout, idx: Tensor) -> Tensor:
    """The current weights of neurons ``idx`` in the flat layout, [k, width] (a copy)."""
    idx = idx.to(layout.out_weight.device)
    return _flat([w.index_select(0, idx) for w in layout.in_weights], layout.out_weight.index_select(1, idx))


# -- the step's compute: one pass for selection, the step's pass resumed where it differs ------------


@dataclass
class TracedBatch:
    """What the selection pass leaves for the step's own forward.

    Attributes:
        trace: the activations of the plastic layers (what the selector scores).
        stream: [B, T, D] the residual stream entering layer ``start`` (None: the model
            cannot resume at a layer, and the step's forward runs from the input).
        start: the lowest plastic layer.
    """

    trace: NeuronTrace
    stream: Tensor | None
    start: int


def trace_pass(model: torch.nn.Module, inputs: Tensor, trace: NeuronTrace, plastic_layers: list[int]) -> TracedBatch:
    """The selection pass, doing only what the selection and the step need.

    It records only the plastic layers, stops after the highest one (the layers above and the
    output head cannot change the selection) and keeps the residual stream entering the lowest
    one: everything below it is frozen, so the step's forward (:func:`resumed_forward`) would
    recompute exactly -- bitwise -- the same stream. Models without ``embed_ids`` /
    ``run_layers`` / ``head`` (e.g. the Hugging Face adapter) run the whole model, as before.

    Args:
        model: the model; inputs: token ids [B, T]; trace: the record to fill (its ``layers``
            is set to ``plastic_layers``); plastic_layers: the layers the step may change.
    """
    layers = sorted(plastic_layers)
    trace.layers = frozenset(layers)
    with torch.no_grad(), neuron_context(trace=trace):
        if not all(hasattr(model, n) for n in ("embed_ids", "run_layers", "head")):
            model(inputs)
            return TracedBatch(trace, None, 0)
        stream = model.run_layers(model.embed_ids(inputs), 0, layers[0])
        model.run_layers(stream, layers[0], layers[-1] + 1)
    return TracedBatch(trace, stream, layers[0])


def resumed_forward(model: torch.nn.Module, inputs: Tensor, traced: TracedBatch) -> Tensor:
    """The step's forward (run it under the plastic overrides): logits [B, T, V], bitwise equal
    to ``model(inputs)``, computing only the layers from the lowest plastic one up."""
    if traced.stream is None:
        return model(inputs)
    return model.head(model.run_layers(traced.stream, traced.start))
