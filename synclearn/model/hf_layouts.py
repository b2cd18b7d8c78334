"""Where the neurons of a Hugging Face causal LM live: one layout per MLP family.

The families are recognised from the module structure (which projections an MLP has and
their shapes), not from a list of model classes:

* gated -- ``gate_proj``/``up_proj``/``down_proj`` (Llama, Qwen2/3, Mistral, Gemma, OLMo-2):
  neuron i = row i of gate and up, column i of down;
* fused gated -- ``gate_up_proj`` [2 d_ff, D] and ``down_proj`` (Phi-3): neuron i = rows i and
  d_ff + i of gate_up, column i of down;
* plain two-layer -- one projection D -> d_ff, an activation, one d_ff -> D (GPT-2's Conv1D
  ``c_fc``/``c_proj``, whose weights are stored transposed [in, out]; GPT-NeoX
  ``dense_h_to_4h``/``dense_4h_to_h``; ``fc1``/``fc2``, ``fc_in``/``fc_out``): neuron i = row i of
  the input projection (and entry i of its bias), column i of the output projection;
* experts of a mixture-of-experts block -- a module holding 3D ``gate_up_proj`` [E, 2I, D] and
  ``down_proj`` [E, D, I] parameters, as transformers 5 stores Mixtral / Qwen-MoE experts:
  every expert is its own neuron unit (its I neurons), plus a shared expert when there is one.

Each unit gets a consecutive *neuron-layer index* (the index learners and traces use): a
dense MLP is one unit, a mixture-of-experts block is E units (then its shared expert).
Layouts hold views of the module's own parameters, so a learner writing neuron rows through
them changes the model in place. Anything else is refused with an error naming the module.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from synclearn.model.neurons import NeuronLayout, consult_context, current_neuron_context

MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe")
ACT_NAMES = ("act_fn", "activation_fn", "act", "activation")
SHARED_EXPERT_NAMES = ("shared_expert", "shared_experts", "shared_mlp")


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a linear layer with its weight stored as [in, out]."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a Conv1D."""
    w = module.weight
    return (w.shape[0], w.shape[1]) if is_conv1d(module) else (w.shape[1], w.shape[0])


def rows_of(module: nn.Module) -> Tensor:
    """The weight as [out, in] (a view for Conv1D): row j produces output feature j."""
    return module.weight.t() if is_conv1d(module) else module.weight


def _activation(module: nn.Module, path: str) -> Callable[[Tensor], Tensor]:
    for name in ACT_NAMES:
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    raise ValueError(f"{path} ({type(module).__name__}) has projections but no activation "
                     f"(looked for {', '.join(ACT_NAMES)})")


@dataclass
class MLPUnit:
    """One set of neurons: a dense MLP, or one expert of a mixture-of-experts block.

    Attributes:
        family: "gated", "fused_gated", "plain" or "expert".
        path: the module's name in the HF model (``model.layers.3.mlp``; experts add ``.<e>``).
        module: the MLP module (for experts, the experts module).
        parts: the base projections (or, for experts, the parameters) the layout reads.
        act: the activation.
        expert: the expert index (experts only).
        index: the unit's neuron-layer index (set by :func:`install`).
    """

    family: str
    path: str
    module: nn.Module
    parts: dict[str, Any]
    act: Callable[[Tensor], Tensor]
    expert: int | None = None
    index: int = -1

    def layout(self) -> NeuronLayout:
        p, act = self.parts, self.act
        if self.family == "gated":
            return NeuronLayout((p["gate"].weight, p["up"].weight), p["down"].weight, lambda g, u: act(g) * u)
        if self.family == "fused_gated":
            w, d_ff = p["gate_up"].weight, p["down"].weight.shape[1]
            return NeuronLayout((w[:d_ff], w[d_ff:]), p["down"].weight, lambda g, u: act(g) * u)
        if self.family == "plain":
            fc_in, fc_out = p["in"], p["out"]
            return NeuronLayout((rows_of(fc_in),), rows_of(fc_out), act, (fc_in.bias,), fc_out.bias)
        return self._expert_layout()

    def _expert_layout(self) -> NeuronLayout:
        m, e, act = self.module, self.expert, self.act
        gate_up, down = m.gate_up_proj[e], m.down_proj[e]
        if getattr(m, "is_transposed", False):  # [D, 2I] and [I, D]
            gate_up, down = gate_up.t(), down.t()
        d_ff = down.shape[1]
        if getattr(m, "is_concatenated", True):
            gate, up = gate_up[:d_ff], gate_up[d_ff:]
        else:  # interleaved [g0, u0, g1, u1, ...]
            gate, up = gate_up[0::2], gate_up[1::2]
        biases: tuple = ()
        out_bias = None
        if getattr(m, "has_bias", False):
            b = m.gate_up_proj_bias[e]
            biases = (b[:d_ff], b[d_ff:]) if getattr(m, "is_concatenated", True) else (b[0::2], b[1::2])
            out_bias = m.down_proj_bias[e]
        return NeuronLayout((gate, up), down, lambda g, u: act(g) * u, biases, out_bias)

    def evaluate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output [..., D], activations h [..., d_ff]) through the module's current
        projections (so adapters such as LoRA take part)."""
        m = self.module
        names = self.parts.get("names", {})
        if self.family == "gated":
            h = self.act(getattr(m, names["gate"])(x)) * getattr(m, names["up"])(x)
            return getattr(m, names["down"])(h), h
        if self.family == "fused_gated":
            gate, up = getattr(m, names["gate_up"])(x).chunk(2, dim=-1)
            h = up * self.act(gate)
            return getattr(m, names["down"])(h), h
        if self.family == "plain":
            h = self.act(getattr(m, names["in"])(x))
            return getattr(m, names["out"])(h), h
        return self.layout().forward(x)


def classify_mlp(module: nn.Module, path: str, hidden: int) -> list[MLPUnit]:
    """The neuron units of one MLP module (one for a dense MLP, one per expert for a MoE block).

    Raises:
        ValueError: naming ``path`` and what was found, when no family fits.
    """
    children = dict(module.named_children())
    experts = [(n, c) for n, c in children.items() if _is_experts(c)]
    if _is_experts(module):
        return _expert_units(module, path)
    if experts:
        name, ex = experts[0]
        units = _expert_units(ex, f"{path}.{name}")
        for shared in SHARED_EXPERT_NAMES:
            if shared in children:
                units += classify_mlp(children[shared], f"{path}.{shared}", hidden)
        return units
    linears = {n: c for n, c in children.items() if is_linear(c)}
    for gate, up, down in (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2")):
        if {gate, up, down} <= set(linears):
            names = {"gate": gate, "up": up, "down": down}
            parts = {k: linears[v] for k, v in names.items()}
            return [MLPUnit("gated", path, module, {**parts, "names": names}, _activation(module, path))]
    if {"gate_up_proj", "down_proj"} <= set(linears):
        names = {"gate_up": "gate_up_proj", "down": "down_proj"}
        parts = {k: linears[v] for k, v in names.items()}
        if linear_shape(parts["gate_up"])[1] != 2 * linear_shape(parts["down"])[0]:
            raise ValueError(f"{path}: gate_up_proj has {linear_shape(parts['gate_up'])[1]} outputs, "
                             f"expected twice down_proj's {linear_shape(parts['down'])[0]} inputs")
        return [MLPUnit("fused_gated", path, module, {**parts, "names": names}, _activation(module, path))]
    if len(linears) == 2:
        (n1, a), (n2, b) = linears.items()
        for (n_in, fc_in), (n_out, fc_out) in (((n1, a), (n2, b)), ((n2, b), (n1, a))):
            (i_in, o_in), (i_out, o_out) = linear_shape(fc_in), linear_shape(fc_out)
            if i_in == hidden and o_out == hidden and o_in == i_out:
                names = {"in": n_in, "out": n_out}
                return [MLPUnit("plain", path, module, {"in": fc_in, "out": fc_out, "names": names},
                                _activation(module, path))]
    found = ", ".join(f"{n}: {type(c).__name__}" for n, c in children.items()) or "no submodules"
    raise ValueError(
        f"{path} ({type(module).__name__}) has no MLP layout synclearn knows: gated (gate_proj/up_proj/down_proj), "
        f"fused gated (gate_up_proj/down_proj), a two-layer D->d_ff->D MLP, or experts with 3D gate_up_proj/"
        f"down_proj parameters; it has {found}")


def _is_experts(module: nn.Module) -> bool:
    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return isinstance(gu, nn.Parameter) and isinstance(down, nn.Parameter) and gu.dim() == 3 and down.dim() == 3


def _expert_units(module: nn.Module, path: str) -> list[MLPUnit]:
    if getattr(module, "has_gate", True) is False:
        raise ValueError(f"{path} ({type(module).__name__}): experts without a gate projection are not supported")
    apply_gate = getattr(type(module), "_apply_gate", None)
    if apply_gate is not None and apply_gate.__name__ != "_default_apply_gate":
        raise ValueError(f"{path} ({type(module).__name__}) gates its experts its own way ({apply_gate.__qualname__}); "
                         "only act(gate) * up experts are supported")
    act = _activation(module, path)
    return [MLPUnit("expert", f"{path}.{e}", module, {}, act, e) for e in range(module.gate_up_proj.shape[0])]


def decoder_layers(hf_model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder layers: the shortest-named ModuleList with one entry per hidden layer
    (``model.layers``, ``transformer.h``, ``gpt_neox.layers``, ``model.decoder.layers``, ...)."""
    config = hf_model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = getattr(text, "num_hidden_layers", None)
    found = [(name, m) for name, m in hf_model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n and n]
    if not found:
        raise ValueError(f"{type(hf_model).__name__}: no list of {n} decoder layers found "
                         "(looked for a ModuleList with one entry per config.num_hidden_layers)")
    return min(found, key=lambda item: (item[0].count("."), len(item[0])))


def mlp_of(layer: nn.Module, path: str) -> tuple[str, nn.Module]:
    for name in MLP_NAMES:
        m = getattr(layer, name, None)
        if isinstance(m, nn.Module):
            return f"{path}.{name}", m
    names = ", ".join(n for n, _ in layer.named_children())
    raise ValueError(f"{path} ({type(layer).__name__}) has no MLP submodule (looked for {', '.join(MLP_NAMES)}; "
                     f"it has {names})")


def find_units(hf_model: nn.Module) -> list[MLPUnit]:
    """Every neuron unit of the model, in neuron-layer order."""
    prefix, layers = decoder_layers(hf_model)
    hidden = hf_model.config.get_text_config().hidden_size if hasattr(hf_model.config, "get_text_config") \
        else hf_model.config.hidden_size
    units: list[MLPUnit] = []
    for i, layer in enumerate(layers):
        path, mlp = mlp_of(layer, f"{prefix}.{i}")
        units += classify_mlp(mlp, path, hidden)
    return units


def lora_targets(hf_model: nn.Module) -> tuple[str, ...]:
    """Names (as peft matches them: the last part of the module name) of the projections
    inside the decoder layers: attention and dense MLP projections; routers, one-output
    gates and 3D expert parameters are left out."""
    _, layers = decoder_layers(hf_model)
    names: list[str] = []
    for name, m in layers.named_modules():
        if is_linear(m) and min(linear_shape(m)) > 1 and not name.endswith(".gate"):
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    return tuple(names)


# -- honouring the neuron context -------------------------------------------------------------------
def install(units: list[MLPUnit]) -> None:
    """Patch each MLP (or experts module) so that it honours
    :func:`~synclearn.model.neurons.neuron_context`: overrides replace a unit's computation and
    a trace records its activations; without a context the module's class forward runs.

    The patched forward is a plain function bound to the module and finds its units on the
    module (``synclearn_units``), so a deep copy of the model (a learner's fork) computes with
    the copy's own weights."""
    by_module: dict[int, list[MLPUnit]] = {}
    for index, unit in enumerate(units):
        unit.index = index
        by_module.setdefault(id(unit.module), []).append(unit)
    for entries in by_module.values():
        module = entries[0].module
        module.synclearn_units = entries
        forward = _experts_forward if entries[0].family == "expert" else _dense_forward
        module.forward = types.MethodType(forward, module)


def _dense_forward(self: nn.Module, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    unit = self.synclearn_units[0]
    override, trace = consult_context(unit.index)
    if override is not None:
        return override(x)
    if trace is not None:
        out, h = unit.evaluate(x)
        trace.record(unit.index, h)
        return out
    return type(self).forward(self, x, *args, **kwargs)


def _experts_forward(self: nn.Module, hidden: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
    """The experts' forward under a context: each expert e runs on the tokens routed to it
    (its override, or its layout), weighted by the router and summed, as transformers does."""
    units = self.synclearn_units
    ctx = current_neuron_context()
    if ctx is not None and ctx.pause is not None:
        ctx.pause()
    if ctx is None or (ctx.trace is None and not any(u.index in ctx.overrides for u in units)):
        return type(self).forward(self, hidden, top_k_index, top_k_weights)
    out = torch.zeros_like(hidden)  # [N, D]
    for unit in units:
        tokens, slot = torch.where(top_k_index == unit.expert)  # [n], [n]
        x = hidden[tokens]  # [n, D]
        override = ctx.overrides.get(unit.index)
        if override is not None:  # called even for no token, so every leaf is in the graph
            y = override(x)
        else:
            y, h = unit.layout().forward(x)
            if ctx.trace is not None:
                full = h.new_zeros(hidden.shape[0], h.shape[-1]).index_copy(0, tokens, h)  # [N, I]
                ctx.trace.record(unit.index, full)
        out = out.index_add(0, tokens, (y * top_k_weights[tokens, slot, None]).to(out.dtype))
    return out
