"""What the memory manager steers in a Learner, through public calls only.

Per plastic layer: which neurons are protected (never selected by a sparse step), per-neuron
learning-rate factors (damping), per-neuron background statistics (handed to the selector);
and for every step: observers called after each committed step, regularizers added to the
loss; and the checkpoint writer an exact forget calls at its commit point (``set_persist``). :class:`~synclearn.learn.learner.Learner` inherits these methods; the values live in
its :class:`~synclearn.learn.updates.NeuronControls`, which the update rule reads.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from synclearn.learn.updates import NeuronControls


class LearnerControls:
    """The steering half of the Learner (see module docstring). Every change takes the
    learner's step lock, so it lands between two steps, never inside one."""

    def _d_ff(self, layer: int) -> int:
        layouts = self.model.neuron_layouts()
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(layouts):
            raise ValueError(f"layer={layer!r} (expected a layer index in [0, {len(layouts)}))")
        return layouts[layer].d_ff

    def protect(self, layer: int, neurons: Tensor | Sequence[int]) -> None:
        """Protect ``neurons`` of ``layer``: no sparse step will select them."""
        with self._lock:
            mask = NeuronControls.mask(layer, self._d_ff(layer), neurons)
            old = self._controls.protected.get(layer)
            self._controls.protected[layer] = mask if old is None else mask | old

    lock = protect  # the older name

    def unprotect(self, layer: int, neurons: Tensor | Sequence[int]) -> None:
        """Let ``neurons`` of ``layer`` be selected again."""
        with self._lock:
            mask = NeuronControls.mask(layer, self._d_ff(layer), neurons)
            if layer in self._controls.protected:
                self._controls.protected[layer] = self._controls.protected[layer] & ~mask

    def set_protected(self, layer: int, mask: Tensor | None) -> None:
        """Replace the protected set of ``layer`` by ``mask`` (BoolTensor [d_ff]); None clears it."""
        with self._lock:
            self._controls.set("protected", layer, self._d_ff(layer), mask)

    def protected(self, layer: int) -> Tensor | None:
        """BoolTensor [d_ff] of ``layer``'s protected neurons (a copy), or None when none ever were."""
        return self._controls.get("protected", layer)

    def free_share(self) -> dict[int, float]:
        """Per plastic layer, the share of its neurons a sparse step may still select (not
        protected); {} for LoRA and full learners, which have no neurons to protect."""
        if self.update != "sparse":
            return {}
        out = {}
        for layer in self.plastic_layers:
            mask = self.protected(layer)
            out[layer] = 1.0 if mask is None else 1.0 - float(mask.sum()) / self._d_ff(layer)
        return out

    def learning_share(self, min_scale: float = 0.5) -> dict[int, float]:
        """Per plastic layer, the share of its neurons that are free (:meth:`free_share`) and learn
        at least ``min_scale`` of the learning rate: damping leaves every neuron free, and this
        says how many of them it still lets move at a useful rate. {} for LoRA and full learners."""
        if self.update != "sparse":
            return {}
        out = {}
        for layer in self.plastic_layers:
            ok = torch.ones(self._d_ff(layer), dtype=torch.bool)
            mask, scale = self.protected(layer), self.lr_scale(layer)
            if mask is not None:
                ok &= ~mask
            if scale is not None:
                ok &= scale >= min_scale
            out[layer] = float(ok.float().mean())
        return out

    def set_lr_scale(self, layer: int, scale: Tensor | None) -> None:
        """Per-neuron learning-rate factors [d_ff] of ``layer`` (e.g. damping); None removes them."""
        with self._lock:
            self._controls.set("lr_scale", layer, self._d_ff(layer), scale)

    def lr_scale(self, layer: int) -> Tensor | None:
        """The per-neuron learning-rate factors of ``layer`` (a copy), or None."""
        return self._controls.get("lr_scale", layer)

    def set_background(self, layer: int, stats: Tensor | None) -> None:
        """Per-neuron background statistics [d_ff] of ``layer`` for the selector; None removes them."""
        with self._lock:
            self._controls.set("background", layer, self._d_ff(layer), stats)

    def background(self, layer: int) -> Tensor | None:
        """The background statistics of ``layer`` (a copy), or None."""
        return self._controls.get("background", layer)

    def add_step_observer(self, fn: Any) -> None:
        """Call ``fn(result, grads)`` after every committed step; ``grads`` maps layer -> the
        flat gradient rows [k, row_len] of the changed neurons (empty for lora/full)."""
        self._observers.append(fn)

    def remove_step_observer(self, fn: Any) -> None:
        self._observers.remove(fn)

    def add_regularizer(self, fn: Any) -> None:
        """Add ``fn() -> scalar Tensor`` to every step's loss (e.g. an EWC penalty)."""
        self._regularizers.append(fn)

    def remove_regularizer(self, fn: Any) -> None:
        self._regularizers.remove(fn)

    def set_anchors(self, anchors: Any) -> None:
        """The :class:`~synclearn.learn.anchors.AnchorSet` that ``{"anchor": k}`` examples index
        (None: none). An attached learner adds ``anchors.draw(step)`` to every batch."""
        with self._lock:
            self.anchors = anchors

    def set_persist(self, fn: Any) -> None:
        """``fn()`` writes a checkpoint of this learner; an exact forget calls it at its commit point."""
        self._persist = fn

    @property
    def persist(self) -> Any:
        return self._persist
