"""The sparse update engine: gradients for the selected neurons only, written back in place.

For each plastic layer, the selected neurons' weights are gathered into small leaf tensors
(one [k, D] per input matrix, one [D, k] for the output columns). The layer then computes::

    h, y   = act(x W_in^T ...), h W_out^T    the dense layer, frozen weights (x keeps its graph)
    a      = act(sg(x) R^T ...) C^T           the selected neurons from the leaves R, C
    out    = y + (a - sg(a))                  sg = stop-gradient (detach)

``a - sg(a)`` is exactly zero, so ``out`` is bitwise the dense layer's output: the step's
loss is the served model's loss. Its backward gives the leaves their gradients ([k, D] only,
never d_ff x D) and x the dense layer's (every neuron's weights are the same values), so the
layers below get exact gradients too. (So the frozen neurons of a plastic layer are computed:
the selector reads their activations, and with more than one plastic layer the gradient of the
lower ones passes through every neuron of the upper ones. What the step does not compute is
any gradient of a frozen weight, nor anything twice.) Base weights have
``requires_grad=False``, so the autograd graph starts at the first plastic layer and backward
stops there by itself.

The step runs in one pass (:func:`selecting_forward`): each plastic layer computes its dense
activations, records them, lets the selector choose from them and gathers the chosen neurons
before the layer's output goes on. That equals -- bitwise, in selection, loss and gradients --
a selection pass over the whole model followed by the step's own forward
(:func:`trace_pass` + :func:`resumed_forward`, which models whose selection needs more than
the activations still use), at the cost of one forward instead of two.

After the optimizer step the new slices are written back with ``index_copy_`` (the caller
holds the model's write lock); every other element of every weight is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


def dense_mlp(x: Tensor, layout: NeuronLayout) -> tuple[Tensor, Tensor]:
    """The layer through its frozen weights: (output [..., D], activations h [..., d_ff]),
    bitwise the model's own dense MLP; x keeps its graph."""
    h = layout.act(*(F.linear(x, w.detach(), layout.in_bias(j)) for j, w in enumerate(layout.in_weights)))
    return F.linear(h, layout.out_weight.detach(), layout.out_bias), h


def leaf_delta(x: Tensor, layout: NeuronLayout, sl: PlasticSlice) -> Tensor:
    """Zero in value; in backward, the selected neurons' leaf gradients. x: [..., D] -> [..., D]."""
    h_sel = layout.act(*(F.linear(x.detach(), r, layout.in_bias(j, sl.idx)) for j, r in enumerate(sl.rows)))
    a = F.linear(h_sel, sl.col)  # [..., D], the selected neurons' share of the output
    return a - a.detach()


def plastic_forward(x: Tensor, layout: NeuronLayout, sl: PlasticSlice) -> Tensor:
    """The layer's output (bitwise the dense one) with ``sl``'s leaves in its graph. x: [..., D] -> [..., D]."""
    return dense_mlp(x, layout)[0] + leaf_delta(x, layout, sl)


Chooser = Callable[[int], Tensor | None]  # layer -> the neurons to update (None: none)


def selecting_forward(model: torch.nn.Module, inputs: Tensor, trace: NeuronTrace, plastic_layers: list[int],
                      choose: Chooser) -> tuple[Tensor, dict[int, PlasticSlice]]:
    """The sparse step's forward in one pass: logits [B, T, V] (bitwise ``model(inputs)``) and
    the gathered slices of the layers that chose neurons.

    Each plastic layer computes its dense activations, records them in ``trace`` (which records
    only the plastic layers) and calls ``choose(layer)``, which reads the trace and returns the
    neuron indices to update (empty or None: the layer stays frozen this step); the chosen
    neurons are gathered and the layer's output goes on through :func:`plastic_forward`.
    Layers are visited in ascending order. The layers below the lowest plastic one run without
    autograd (for models with ``embed_ids`` / ``run_layers`` / ``head``).

    For the selection the model's MLP must hand its override every token of the batch (not so
    for experts of a mixture, which see their routed tokens) and the selector must need nothing
    but the activations (not the predictor's scores); otherwise use :func:`trace_pass` +
    :func:`resumed_forward`.
    """
    layers = sorted(plastic_layers)
    trace.layers = frozenset(layers)
    layouts = model.neuron_layouts()
    slices: dict[int, PlasticSlice] = {}

    def plastic(layer: int) -> Callable[[Tensor], Tensor]:
        layout = layouts[layer]

        def run(x: Tensor) -> Tensor:
            out, h = dense_mlp(x, layout)
            trace.record(layer, h)
            idx = choose(layer)
            if idx is None or not len(idx):
                return out
            slices[layer] = sl = gather_slice(layout, layer, idx)
            return out + leaf_delta(x, layout, sl)
        return run

    overrides = {layer: plastic(layer) for layer in layers}
    if all(hasattr(model, n) for n in ("embed_ids", "run_layers", "head")):
        with torch.no_grad():
            stream = model.run_layers(model.embed_ids(inputs), 0, layers[0])
        with neuron_context(overrides=overrides):
            logits = model.head(model.run_layers(stream, layers[0]))
    else:
        with neuron_context(overrides=overrides):
            logits = model(inputs)
    return logits, slices


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


# -- the two-pass form: a selection pass, then the step's pass resumed where it differs ----------------


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


# -- the three forms behind one call -----------------------------------------------------------------

STEP_FORMS = ("one_pass", "two_pass", "reference")


def step_forward(model: torch.nn.Module, inputs: Tensor, trace: NeuronTrace, plastic_layers: list[int],
                 choose: Chooser, form: str = "one_pass") -> tuple[Tensor | None, dict[int, PlasticSlice]]:
    """The sparse step's forward, (logits, slices), in one of its three forms -- bitwise one result:

    * ``"one_pass"``: :func:`selecting_forward`;
    * ``"two_pass"``: :func:`trace_pass`, then every plastic layer chooses, then
      :func:`resumed_forward` through the gathered neurons (selectors that read the predictor);
    * ``"reference"``: a whole dense forward records the trace, then a whole forward through the
      gathered neurons (the slow reference the other two are proven against).

    ``choose`` as in :func:`selecting_forward` (called in ascending layer order). When no layer
    chose a neuron the logits are None and ``slices`` is empty.
    """
    if form not in STEP_FORMS:
        raise ValueError(f"form={form!r} (expected one of {STEP_FORMS})")
    if form == "one_pass":
        return selecting_forward(model, inputs, trace, plastic_layers, choose)
    layers = sorted(plastic_layers)
    layouts = model.neuron_layouts()
    if form == "two_pass":
        traced = trace_pass(model, inputs, trace, layers)
    else:
        trace.layers = frozenset(layers)
        with torch.no_grad(), neuron_context(trace=trace):
            model(inputs)
    chosen = {layer: choose(layer) for layer in layers}
    slices = {layer: gather_slice(layouts[layer], layer, idx) for layer, idx in chosen.items()
              if idx is not None and len(idx)}
    if not slices:
        return None, {}
    overrides = {layer: (lambda x, lo=layouts[layer], sl=sl: plastic_forward(x, lo, sl)) for layer, sl in slices.items()}
    with neuron_context(overrides=overrides):
        logits = resumed_forward(model, inputs, traced) if form == "two_pass" else model(inputs)
    return logits, slices
