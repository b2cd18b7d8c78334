"""Local Hugging Face causal LMs behind synclearn's stateful-LM surface.

:class:`HFCausalLM` wraps a ``transformers`` causal LM loaded from a local directory (nothing
is downloaded) so that the learner, generation and chat treat it like an MCSD model:

* ``model(ids)``, ``prefill(ids, state)``, ``step(ids_t, state)``, ``init_state(batch)``; the
  state is the KV cache (it grows with the context, unlike MCSD's);
* ``neuron_layouts()``: Llama-style MLPs (``gate_proj``/``up_proj``/``down_proj``) define the
  neurons -- row i of gate and up, column i of down -- so sparse in-place learning works;
* each MLP honours :func:`synclearn.model.neurons.neuron_context` (trace and overrides).

The tokenizer is the directory's own when it has one (``AutoTokenizer``), else the byte
tokenizer (for tiny test models with ``vocab_size >= 263``).
"""

from __future__ import annotations

import inspect
import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from synclearn.model.neurons import NeuronLayout, consult_context
from synclearn.model.tokenizer import ByteTokenizer


@dataclass
class HFState:
    """Decoding state of a HF model: its KV cache and the tokens consumed per sequence."""

    cache: Any
    pos: Tensor

    @property
    def batch_size(self) -> int:
        return self.pos.shape[0]

    def nbytes(self) -> int:
        total = 0
        for layer in getattr(self.cache, "layers", []):
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, Tensor):
                    total += t.numel() * t.element_size()
        return total


class HFTokenizer:
    """A HF tokenizer with the byte tokenizer's surface (encode/decode/chat/turn/stream)."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.END = tok.eos_token_id
        self.EOS = tok.eos_token_id

    @property
    def stop_ids(self) -> frozenset[int]:
        return frozenset(i for i in (self.tok.eos_token_id,) if i is not None)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        ids = self.tok.encode(text, add_special_tokens=False)
        if bos and self.tok.bos_token_id is not None:
            ids = [self.tok.bos_token_id, *ids]
        return ids + ([self.EOS] if eos and self.EOS is not None else [])

    def decode(self, ids, *, show_special: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=not show_special)

    def chat(self, messages, *, add_generation_prompt: bool = True) -> list[int]:
        if getattr(self.tok, "chat_template", None):
            return list(self.tok.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, tokenize=True))
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + ("assistant: " if add_generation_prompt else "")
        return self.encode(text)

    def turn(self, prompt: str, response: str | None = None) -> tuple[list[int], list[int]]:
        p = self.chat([{"role": "user", "content": prompt}])
        r = [] if response is None else [*self.encode(response), *([self.END] if self.END is not None else [])]
        return p, r

    def stream_decoder(self) -> "_HFStreamDecoder":
        return _HFStreamDecoder(self)


class _HFStreamDecoder:
    """Decodes the running id list and releases the new complete text."""

    def __init__(self, tok: HFTokenizer) -> None:
        self.tok, self.ids, self.sent = tok, [], 0

    def feed(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        out, self.sent = text[self.sent :], len(text)
        return out

    def flush(self) -> str:
        text = self.tok.decode(self.ids)
        out, self.sent = text[self.sent :], len(text)
        return out


def _gated_mlp_forward(self: nn.Module, x: Tensor) -> Tensor:
    """Replacement forward for a Llama-style MLP that honours the neuron context."""
    override, trace = consult_context(self.layer_index)
    if override is not None:
        return override(x)
    if trace is not None:
        out, h = self.synclearn_layout().forward(x)
        trace.record(self.layer_index, h)
        return out
    return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def _gated_layout(self: nn.Module) -> NeuronLayout:
    act = self.act_fn
    return NeuronLayout((self.gate_proj.weight, self.up_proj.weight), self.down_proj.weight, lambda g, u: act(g) * u)


class HFCausalLM(nn.Module):
    """A HF causal LM with the stateful-LM and neuron-layout surface (see module docstring)."""

    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __init__(self, hf_model: nn.Module, tokenizer: Any = None) -> None:
        super().__init__()
        self.hf = hf_model
        self.config = hf_model.config
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        layers = getattr(getattr(hf_model, "model", None), "layers", None)
        if layers is None:
            raise ValueError(f"{type(hf_model).__name__} has no model.layers; expected a Llama-style decoder")
        # transformers renamed past_key_values to cache (5.x); accept either.
        params = inspect.signature(type(hf_model).forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._mlps = []
        for i, layer in enumerate(layers):
            mlp = getattr(layer, "mlp", None)
            if mlp is None or not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
                raise ValueError(
                    f"layer {i} of {type(hf_model).__name__} has no Llama-style MLP "
                    "(gate_proj/up_proj/down_proj/act_fn); sparse learning needs one"
                )
            mlp.layer_index = i
            mlp.forward = types.MethodType(_gated_mlp_forward, mlp)
            mlp.synclearn_layout = types.MethodType(_gated_layout, mlp)
            self._mlps.append(mlp)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def mlps(self) -> list[nn.Module]:
        return list(self._mlps)

    def neuron_layouts(self) -> list[NeuronLayout]:
        return [m.synclearn_layout() for m in self._mlps]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: Tensor, **_: Any) -> Tensor:
        """ids [B, T] -> logits [B, T, V] (no cache)."""
        return self.hf(input_ids=ids, use_cache=False).logits

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> HFState:
        from transformers import DynamicCache

        return HFState(DynamicCache(), torch.zeros(batch_size, dtype=torch.long, device=device or self.device))

    def prefill(self, ids: Tensor, state: HFState | None = None, **_: Any) -> tuple[Tensor, HFState]:
        state = state if state is not None else self.init_state(ids.shape[0])
        out = self.hf(input_ids=ids, **{self._cache_arg: state.cache}, use_cache=True)
        return out.logits, HFState(getattr(out, self._cache_arg), state.pos + ids.shape[1])

    def step(self, ids_t: Tensor, state: HFState, **_: Any) -> tuple[Tensor, HFState]:
        logits, state = self.prefill(ids_t[:, None], state)
        return logits[:, -1], state

    def generate(self, prompt, **kwargs: Any):
        from synclearn.model.generate import generate

        return generate(self, prompt, **kwargs)


def load_hf_model(path: str | os.PathLike, *, dtype: torch.dtype | None = None, device: Any = None) -> HFCausalLM:
    """Load a causal LM from a local directory (``local_files_only``); never downloads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    if device is not None:
        model = model.to(device)
    tokenizer = None
    if any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
    return HFCausalLM(model.eval(), tokenizer).eval()
