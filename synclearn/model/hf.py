"""Local Hugging Face causal LMs behind synclearn's stateful-LM surface.

:class:`HFCausalLM` wraps a ``transformers`` causal LM loaded from a local directory (nothing
is downloaded) so that the learner, generation and chat treat it like an MCSD model:

* ``model(ids)``, ``prefill(ids, state)``, ``step(ids_t, state)``, ``init_state(batch)``;
* decoding states are values (:class:`HFState`): stepping twice from one state gives the same
  logits, and a state stays valid whatever is computed from it later. A state is a position
  in a KV cache that only grows by concatenation (transformers' DynamicCache never writes
  into the tensors it holds); the state at the cache's end extends it in place, any other
  state first forks a copy cut back to its own length (copy-on-write, once per branch);
* ``neuron_layouts()``: one layout per MLP unit, found from the module structure
  (:mod:`synclearn.model.hf_layouts`: gated, fused gate-up, plain two-layer, experts);
  ``lora_targets``: the model's own projection names. A mixture-of-experts block counts as
  one neuron unit per expert (then its shared expert), so the learner's ``plastic_layers=N``
  means the last N units (``neuron_layer_names`` lists them);
* every MLP honours :func:`synclearn.model.neurons.neuron_context` (trace and overrides).

The tokenizer is the directory's own (:class:`~synclearn.model.hf_tokenizer.HFTokenizer`, with
its chat template), else the byte tokenizer -- which needs a vocabulary of at least 263 ids;
a model whose vocabulary fits neither is refused at load.
"""

from __future__ import annotations

import inspect
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from synclearn.model.hf_layouts import MLPUnit, find_units, install, lora_targets
from synclearn.model.hf_tokenizer import HFStreamDecoder, HFTokenizer, template_ids
from synclearn.model.neurons import NeuronLayout
from synclearn.model.tokenizer import ByteTokenizer

__all__ = ["HFCausalLM", "HFState", "HFStreamDecoder", "HFTokenizer", "load_hf_model", "template_ids"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


class _Timeline:
    """A KV cache shared by the states along one branch; ``lock`` serializes extending it."""

    def __init__(self, cache: Any) -> None:
        self.cache, self.lock = cache, threading.Lock()


def _layer_tensors(cache: Any) -> list[tuple[Tensor, Tensor]]:
    """Per layer (keys, values) [B, H, T, d] of a DynamicCache (transformers 5.x or 4.x)."""
    if hasattr(cache, "layers"):
        return [(l.keys, l.values) for l in cache.layers if getattr(l, "keys", None) is not None
                and l.keys.numel() > 0]
    return list(zip(cache.key_cache, cache.value_cache))


def _cache_length(cache: Any) -> int:
    return int(cache.get_seq_length())


def _fork(cache: Any, length: int) -> Any:
    """A new DynamicCache holding the first ``length`` positions of ``cache`` (copied)."""
    from transformers import DynamicCache

    new = DynamicCache()
    if length > 0:
        for i, (k, v) in enumerate(_layer_tensors(cache)):
            new.update(k[..., :length, :].clone(), v[..., :length, :].clone(), i)
    return new


@dataclass(frozen=True)
class HFState:
    """Decoding state of a HF model: a position on a KV-cache timeline.

    Attributes:
        timeline: the cache (shared with the states before and after this one on its branch).
        length: cached positions this state covers.
        pos: [B] tokens consumed per sequence.
    """

    timeline: _Timeline = field(repr=False)
    length: int
    pos: Tensor

    @property
    def cache(self) -> Any:
        return self.timeline.cache

    @property
    def batch_size(self) -> int:
        return self.pos.shape[0]

    def nbytes(self) -> int:
        """Bytes of this state's share of the cache (``length`` positions)."""
        total = 0
        for k, v in _layer_tensors(self.timeline.cache):
            for t in (k, v):
                per_position = t.numel() // max(1, t.shape[-2]) * t.element_size()
                total += per_position * min(self.length, t.shape[-2])
        return total


class HFCausalLM(nn.Module):
    """A HF causal LM with the stateful-LM and neuron-layout surface (see module docstring).

    Args:
        hf_model: a transformers causal LM.
        tokenizer: an :class:`HFTokenizer` (or any tokenizer with that surface); None: bytes.

    Raises:
        ValueError: an MLP without a known layout (naming the module), or a tokenizer whose
            ids do not fit the model's vocabulary.
    """

    def __init__(self, hf_model: nn.Module, tokenizer: Any = None) -> None:
        super().__init__()
        self.hf = hf_model
        self.config = hf_model.config
        vocab = hf_model.get_input_embeddings().num_embeddings
        if tokenizer is None:
            if vocab < ByteTokenizer.size:
                raise ValueError(f"{type(hf_model).__name__} has no tokenizer and a vocabulary of {vocab} ids, fewer than "
                                 f"the byte tokenizer's {ByteTokenizer.size}; save the model's tokenizer beside it "
                                 "(tokenizer.save_pretrained(model_dir))")
            tokenizer = ByteTokenizer()
        size = getattr(tokenizer, "size", None)
        if isinstance(size, int) and size > vocab:
            raise ValueError(f"the tokenizer has {size} ids but {type(hf_model).__name__}'s vocabulary only {vocab}; "
                             "they do not belong together")
        self.tokenizer = tokenizer
        # transformers renamed past_key_values to cache (5.x); accept either.
        params = inspect.signature(type(hf_model).forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._units: list[MLPUnit] = find_units(hf_model)
        install(self._units)
        self.lora_targets = lora_targets(hf_model)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def mlps(self) -> list[nn.Module]:
        """The module of each neuron unit (an experts module appears once per expert)."""
        return [u.module for u in self._units]

    @property
    def neuron_families(self) -> list[str]:
        """Per neuron unit: "gated", "fused_gated", "plain" or "expert"."""
        return [u.family for u in self._units]

    @property
    def neuron_layer_names(self) -> list[str]:
        """Per neuron unit: its module's name (experts: ``...experts.<e>``)."""
        return [u.path for u in self._units]

    def neuron_layouts(self) -> list[NeuronLayout]:
        return [u.layout() for u in self._units]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: Tensor, **_: Any) -> Tensor:
        """ids [B, T] -> logits [B, T, V] (no cache)."""
        return self.hf(input_ids=ids, use_cache=False).logits

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> HFState:
        from transformers import DynamicCache

        return HFState(_Timeline(DynamicCache()), 0, torch.zeros(batch_size, dtype=torch.long,
                                                                   device=device or self.device))

    def prefill(self, ids: Tensor, state: HFState | None = None, **_: Any) -> tuple[Tensor, HFState]:
        """ids [B, T] after ``state`` -> (logits [B, T, V], the state after them). ``state`` is
        left as it was."""
        state = state if state is not None else self.init_state(ids.shape[0])
        with state.timeline.lock:  # check and extend at once: two branches never share an end
            timeline = state.timeline
            if _cache_length(timeline.cache) != state.length:  # a later state exists: branch off
                timeline = _Timeline(_fork(timeline.cache, state.length))
            out = self.hf(input_ids=ids, **{self._cache_arg: timeline.cache}, use_cache=True)
            cache = getattr(out, self._cache_arg, None)
            cache = timeline.cache if cache is None else cache
            if cache is not timeline.cache:
                timeline = _Timeline(cache)
            length = _cache_length(cache)
        return out.logits, HFState(timeline, length, state.pos + ids.shape[1])

    def step(self, ids_t: Tensor, state: HFState, **_: Any) -> tuple[Tensor, HFState]:
        """ids_t [B] -> (logits [B, V], the next state)."""
        logits, state = self.prefill(ids_t[:, None], state)
        return logits[:, -1], state

    def generate(self, prompt, **kwargs: Any):
        from synclearn.model.generate import generate

        return generate(self, prompt, **kwargs)


def _extra_stop_ids(model: nn.Module) -> list[int]:
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if eos is None:
        return []
    return [int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos])]


def load_hf_model(path: str | os.PathLike, *, dtype: torch.dtype | None = None, device: Any = None) -> HFCausalLM:
    """Load a causal LM and its tokenizer from a local directory (``local_files_only``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    if device is not None:
        model = model.to(device)
    tokenizer = None
    if any((path / f).exists() for f in TOKENIZER_FILES):
        tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True), _extra_stop_ids(model))
    return HFCausalLM(model.eval(), tokenizer).eval()
