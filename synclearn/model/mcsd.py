"""MCSD language model: a linear-time mixer with a constant-size decoding state.

Layer: ``x = x + MCSD(RMSNorm(x)); x = x + MLP(RMSNorm(x))``. The input [B, T, D] is split
into C channels of Dc = D / C features. For channel i:

* slope section: U = X W_U, V = X W_V, slope b_i = 2^(-8 (i+1) / C). V'_n is the softmax
  average of strictly-past values with weights exp(-(n-m) b_i), i.e. S_n / Z_n with
  S_n = sum_{m<n} e^{-(n-m) b_i} V_m and the data-independent Z_n = sum_{j=1..n} e^{-j b_i}.
  out_s = SiLU(V') * U.
* decay section: F = X W_F, E = X W_E, a_i = 1 - 2^(-5-i); E'_n = sum_{m<n} a_i^(n-m) E_m,
  RMS-normalized per channel; out_d = E' * sigmoid(F). With ``gated_decay`` every token sets
  the decay per feature, dt_n = softplus(X W_G + b_G): E'_n = sum_{m<n} prod_{k=m..n-1} a_i^dt_k
  dt_m E_m (a selective scan, :func:`~synclearn.model.scan.chunk_gated_scan`; each factor
  a_i^dt_k is at least e^-4); dt = 1 at initialization, the fixed form.
* output: out_proj(concat(out_s, out_d)).

Both sections are scalar-decay scans (:mod:`synclearn.model.scan`), so the decoding state per
layer is two [C, Dc] tensors, plus one position counter per sequence and the normalizer Z_n
[B, C] (shared by every layer: it depends only on n and the slopes), carried by the recurrence
Z_{n+1} = e^{-b} (1 + Z_n) so a decode step computes no exponential. The three evaluation
forms -- naive (:mod:`synclearn.model.naive`), chunked (``forward``/``prefill``) and recurrent
(``step``) -- compute the same function.

States are values: ``step`` and ``prefill`` never modify the state they are given; they
return a new one. Under inference (no autograd) ``step`` writes every layer's new sums
straight into one freshly allocated [n_layers, B, C, Dc] buffer per section (no per-token
``torch.stack``) and builds the output projection's input in one [B, 2D] buffer (no ``cat``);
unless a neuron context or an adapter needs the modules, the layers run as one fused kernel
sequence (:mod:`synclearn.model.decode_step`, tested equal to ``MCSDBlock.step``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synclearn.model.config import MCSDConfig
from synclearn.model.decode_step import DecodeKernel, LayerWeights
from synclearn.model.neurons import NeuronLayout, NeuronTrace, SelectableMLP, SparseSpec, current_neuron_context
from synclearn.model.scan import GATE_LOG_FLOOR, chunk_decay_scan, chunk_gated_scan, recurrent_decay_step
from synclearn.model.tokenizer import ByteTokenizer


@dataclass
class MCSDState:
    """Decoding state of a whole model; its size does not grow with the context.

    Attributes:
        slope: [n_layers, B, C, Dc] unnormalized slope-section sums S_n.
        decay: [n_layers, B, C, Dc] decay-section sums E'_n (before the norm).
        pos: [B] int64, tokens consumed so far by each sequence.
        z: [B, C] the slope normalizer Z_n (float32, or float64 for a float64 model), or None
            to compute it from ``pos`` (closed form) at the next step.
    """

    slope: Tensor
    decay: Tensor
    pos: Tensor
    z: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.pos.shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.slope, self.decay, self.pos, self.z) if t is not None)

    def clone(self) -> "MCSDState":
        return MCSDState(self.slope.clone(), self.decay.clone(), self.pos.clone(), None if self.z is None else self.z.clone())

    def detach(self) -> "MCSDState":
        return MCSDState(self.slope.detach(), self.decay.detach(), self.pos, self.z)


class MCSDMixer(nn.Module):
    """The MCSD token mixer (slope + decay sections). Weights: in_proj = [W_U; W_V; W_F; W_E],
    and ``gate`` = (W_G, b_G) with ``config.gated_decay`` (else None)."""

    def __init__(self, config: MCSDConfig) -> None:
        super().__init__()
        D, C = config.d_model, config.n_channels
        self.n_channels, self.d_channel, self.chunk_size = C, D // C, config.chunk_size
        self.eps = config.norm_eps
        self.in_proj = nn.Linear(D, 4 * D, bias=False)
        self.out_proj = nn.Linear(2 * D, D, bias=False)
        self.e_norm_weight = nn.Parameter(torch.ones(C, D // C))
        self.gate = nn.Linear(D, D, bias=True) if config.gated_decay else None
        self.reset_gate()
        i = torch.arange(C, dtype=torch.float64)
        # Fixed constants, kept in float64 outside the module's buffers so a cast of the model
        # to bf16 cannot round a_i = 1 - 2^-14 to 1.
        self.slope = torch.pow(2.0, -8.0 * (i + 1) / C)  # b_i
        self.decay = 1.0 - torch.pow(2.0, -5.0 - i)  # a_i
        self._consts: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    @torch.no_grad()
    def reset_gate(self) -> None:
        """W_G = 0 and b_G = softplus^-1(1): dt = 1 for every token, the fixed-decay mixer."""
        if self.gate is not None:
            self.gate.weight.zero_()
            self.gate.bias.fill_(math.log(math.expm1(1.0)))

    def gated_decay_inputs(self, x: Tensor, e: Tensor, log_d: Tensor) -> tuple[Tensor, Tensor]:
        """(dt * E, log a_n) of the gated decay section, log a_n = max(dt * log a, -GATE_LOG_FLOOR).
        x: [..., D]; e: [..., C, Dc]; log_d: [C] log a."""
        dt = F.softplus(self.gate(x)).view(e.shape)
        return dt * e, (dt * log_d[:, None].to(dt.dtype)).clamp(min=-GATE_LOG_FLOOR)

    def _constants(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(log slope-decay = -b, log decay = log a, e^-b, 1 / expm1(-b)) on device, in >= fp32."""
        dt = dtype if dtype == torch.float64 else torch.float32
        key = (device, dt)
        if key not in self._consts:
            b = self.slope
            self._consts[key] = tuple(
                t.to(device=device, dtype=dt) for t in (-b, torch.log(self.decay), torch.exp(-b), 1.0 / torch.expm1(-b))
            )
        return self._consts[key]

    def normalizer(self, pos: Tensor, dtype: torch.dtype) -> Tensor:
        """Z_n = sum_{j=1..n} e^{-jb} in closed form. pos: [...] counts n -> [..., C] (>= fp32)."""
        neg_b, _, exp_neg_b, inv_expm1 = self._constants(pos.device, dtype)
        # Z_p = e^{-b} (1 - e^{-pb}) / (1 - e^{-b}), in expm1 form.
        return exp_neg_b * torch.expm1(pos.to(neg_b.dtype)[..., None] * neg_b) * inv_expm1

    def next_normalizer(self, z: Tensor) -> Tensor:
        """Z_{n+1} = e^{-b} (1 + Z_n). z: [B, C] -> [B, C]."""
        return (z + 1.0) * self._constants(z.device, z.dtype)[2]

    @staticmethod
    def inverse_normalizer(z: Tensor) -> Tensor:
        """1 / Z_n, and 0 where Z_n = 0 (no past token: the average is 0). [...] -> [...]."""
        return torch.where(z > 0, z, torch.ones_like(z)).reciprocal_().mul_(z > 0)

    def _average(self, s: Tensor, pos: Tensor) -> Tensor:
        """V' = S_n / Z_n. s: [B, T, C, Dc]; pos: [B, T] number of past tokens n."""
        z = self.normalizer(pos, s.dtype).to(s.dtype)[..., None]  # [B, T, C, 1]
        return torch.where(z > 0, s / torch.where(z > 0, z, torch.ones_like(z)), torch.zeros_like(s))

    def _norm_e(self, e: Tensor) -> Tensor:
        return F.rms_norm(e, (self.d_channel,), None, self.eps) * self.e_norm_weight  # weight is per channel [C, Dc]

    def forward(self, x: Tensor, slope_state: Tensor | None, decay_state: Tensor | None, pos: Tensor):
        """Chunked form. x: [B, T, D]; states: [B, C, Dc] or None; pos: [B] tokens before x.

        Returns (y [B, T, D], new slope state [B, C, Dc], new decay state [B, C, Dc]).
        """
        B, T, D = x.shape
        C, Dc = self.n_channels, self.d_channel
        log_s, log_d, _, _ = self._constants(x.device, x.dtype)
        u, v, f, e = self.in_proj(x).chunk(4, dim=-1)  # 4 x [B, T, D]
        s_past, s_new = chunk_decay_scan(v.reshape(B, T, C, Dc), log_s, slope_state, self.chunk_size)
        positions = pos[:, None] + torch.arange(T, device=x.device)[None, :]  # [B, T]
        out_s = F.silu(self._average(s_past, positions).reshape(B, T, D)) * u
        if self.gate is None:
            e_past, d_new = chunk_decay_scan(e.reshape(B, T, C, Dc), log_d, decay_state, self.chunk_size)
        else:
            e_in, log_a = self.gated_decay_inputs(x, e.reshape(B, T, C, Dc), log_d)
            e_past, d_new = chunk_gated_scan(e_in, log_a, decay_state)
        out_d = self._norm_e(e_past).reshape(B, T, D) * torch.sigmoid(f)
        return self.out_proj(torch.cat([out_s, out_d], dim=-1)), s_new, d_new

    def step(
        self,
        x: Tensor,
        slope_state: Tensor,
        decay_state: Tensor,
        pos: Tensor,
        *,
        inv_z: Tensor | None = None,
        out: tuple[Tensor, Tensor, Tensor] | None = None,
    ):
        """Recurrent form, one token. x: [B, D]; states [B, C, Dc]; pos [B]. Same returns.

        Args:
            inv_z: [B, C] 1 / Z_n for this token (what :meth:`MCSDLM.step` computes once for
                every layer); None: computed here from ``pos``.
            out: inference only (no autograd): (slope dest [B, C, Dc], decay dest [B, C, Dc],
                scratch [B, 2D]); the new states are written into the first two and returned.
        """
        B, D = x.shape
        C, Dc = self.n_channels, self.d_channel
        if inv_z is None:
            inv_z = self.inverse_normalizer(self.normalizer(pos, x.dtype))
        u, v, f, e = self.in_proj(x).chunk(4, dim=-1)  # 4 x [B, D]
        v, e = v.reshape(B, C, Dc), e.reshape(B, C, Dc)
        fast = (out is not None and slope_state.dtype == x.dtype and x.dtype in (torch.float32, torch.float64)
                and self.gate is None)
        if not fast:  # autograd, a low-precision state or a gated decay: the scan helper upcasts
            log_s, log_d, _, _ = self._constants(x.device, x.dtype)
            s_past, s_new = recurrent_decay_step(v, log_s, slope_state)
            out_s = F.silu((s_past * inv_z.to(s_past.dtype)[..., None]).reshape(B, D)) * u
            if self.gate is not None:
                e, log_d = self.gated_decay_inputs(x, e, log_d)
            e_past, d_new = recurrent_decay_step(e, log_d, decay_state)
            out_d = self._norm_e(e_past).reshape(B, D) * torch.sigmoid(f)
            if out is not None:
                out[0].copy_(s_new)
                out[1].copy_(d_new)
                s_new, d_new = out[0], out[1]
            return self.out_proj(torch.cat([out_s, out_d], dim=-1)), s_new, d_new
        s_dst, d_dst, mix = out
        _, _, exp_neg_b, _ = self._constants(x.device, x.dtype)
        decay = self._decay_factors(x.device, x.dtype)
        torch.mul(torch.add(slope_state, v, out=s_dst), exp_neg_b[None, :, None], out=s_dst)  # a (s + v)
        torch.mul(torch.add(decay_state, e, out=d_dst), decay, out=d_dst)
        out_s = F.silu((slope_state * inv_z[..., None]).view(B, D))
        torch.mul(out_s, u, out=mix[:, :D])
        torch.mul(self._norm_e(decay_state).view(B, D), torch.sigmoid(f), out=mix[:, D:])
        return self.out_proj(mix), s_dst, d_dst

    def step_factors(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(e^{-b}, a) as [C, 1] in ``dtype``: what one recurrent step multiplies the sums by."""
        return self._constants(device, dtype)[2][:, None], self._decay_factors(device, dtype)[0]

    def _decay_factors(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """a_i as [1, C, 1] in ``dtype`` (cached with the other constants)."""
        key = ("a", device, dtype)
        if key not in self._consts:
            self._consts[key] = torch.exp(self._constants(device, dtype)[1])[None, :, None]
        return self._consts[key]


class MCSDBlock(nn.Module):
    """One residual layer: mixer then selectable-neuron MLP, each behind an RMSNorm."""

    def __init__(self, config: MCSDConfig, layer_index: int = 0) -> None:
        super().__init__()
        self.norm_mix = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mixer = MCSDMixer(config)
        self.norm_mlp = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SelectableMLP(config.d_model, config.d_ff, config.predictor_rank, layer_index)

    def forward(self, x, slope_state, decay_state, pos, *, sparse=None, trace=None):
        h, s, d = self.mixer(self.norm_mix(x), slope_state, decay_state, pos)
        x = x + h
        return x + self.mlp(self.norm_mlp(x), sparse=sparse, trace=trace), s, d

    def decode_weights(self) -> LayerWeights | None:
        """The layer's tensors for :func:`~synclearn.model.decode_step.layer_step`, or None when
        a module was replaced (e.g. a LoRA adapter) and only the module path computes it."""
        mods = (self.mixer.in_proj, self.mixer.out_proj, self.mlp.up, self.mlp.down)
        if any(type(m) is not nn.Linear for m in mods) or any(type(n) is not nn.RMSNorm for n in (self.norm_mix, self.norm_mlp)):
            return None
        pred = self.mlp.predictor
        up, down_rows = self.mlp.neuron_rows()
        gate = self.mixer.gate
        if gate is not None and type(gate) is not nn.Linear:
            return None
        return LayerWeights(self.norm_mix.weight, self.mixer.in_proj.weight, self.mixer.e_norm_weight,
                            self.mixer.out_proj.weight.t(), self.norm_mlp.weight, up, down_rows,
                            *((pred.proj.weight, pred.score.weight, pred.score.bias) if pred is not None else (None,) * 3),
                            *((gate.weight, gate.bias) if gate is not None else (None, None)))

    def step(self, x, slope_state, decay_state, pos, *, sparse=None, inv_z=None, out=None):
        h, s, d = self.mixer.step(self.norm_mix(x), slope_state, decay_state, pos, inv_z=inv_z, out=out)
        x = x + h
        return x + self.mlp(self.norm_mlp(x), sparse=sparse), s, d


class MCSDLM(nn.Module):
    """MCSD causal language model over the byte tokenizer.

    Public surface::

        logits = model(ids)                              # [B, T] -> [B, T, V]
        logits, state = model.prefill(ids, state=None)   # chunked form + final state
        state = model.init_state(batch_size)
        logits, state = model.step(ids_t, state)         # [B] -> [B, V], recurrent form
        gen = model.generate("text", max_new_tokens=64)  # see synclearn.model.generate
    """

    def __init__(self, config: MCSDConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = ByteTokenizer()
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(MCSDBlock(config, i) for i in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.decode_kernel = DecodeKernel()  # decode_step.layers_step, eager unless compile_decode() is called
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.init_std
        resid_std = std / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith(("mixer.out_proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, 0.0, resid_std)
            elif ".predictor." in name:
                continue  # keeps nn.Linear's default init; trained by fit_predictor
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, std)
            else:
                nn.init.ones_(p)
        for block in self.blocks:
            block.mixer.reset_gate()

    # -- helpers ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def mlps(self) -> list[SelectableMLP]:
        """The selectable-neuron MLPs, one per layer, in order."""
        return [b.mlp for b in self.blocks]

    def neuron_layouts(self) -> list[NeuronLayout]:
        """Where each layer's MLP neurons live (what a sparse learner updates)."""
        return [m.layout() for m in self.mlps]

    #: module names LoRA adapters attach to (peft ``target_modules``).
    lora_targets = ("in_proj", "out_proj", "up", "down")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> MCSDState:
        """A zero state for ``batch_size`` sequences that have seen no tokens."""
        cfg = self.config
        shape = (cfg.n_layers, batch_size, cfg.n_channels, cfg.d_channel)
        device, dtype = device or self.device, dtype or self.dtype
        return MCSDState(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(batch_size, device=device, dtype=torch.long),
        )

    def _check_ids(self, ids: Tensor, dims: int) -> None:
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32) or ids.dim() != dims:
            want = "[B, T]" if dims == 2 else "[B]"
            raise ValueError(f"expected integer token ids of shape {want}, got {getattr(ids, 'dtype', type(ids))} {tuple(getattr(ids, 'shape', ()))}")
        if ids.device.type != "cpu":
            # reading the range back would sync the device on every decode step (and rule out
            # CUDA graphs); the embedding's own device-side bounds check still fires
            return
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got [{int(ids.min())}, {int(ids.max())}]")

    # -- the three entry points ----------------------------------------------------------------
    def forward(self, ids: Tensor, *, sparse: SparseSpec | None = None, trace: NeuronTrace | None = None) -> Tensor:
        """Chunked form from an empty state. ids: [B, T] -> logits [B, T, V]."""
        return self.prefill(ids, None, sparse=sparse, trace=trace)[0]

    def prefill(
        self,
        ids: Tensor,
        state: MCSDState | None = None,
        *,
        sparse: SparseSpec | None = None,
        trace: NeuronTrace | None = None,
    ) -> tuple[Tensor, MCSDState]:
        """Chunked form continuing from ``state``. ids: [B, T] -> (logits [B, T, V], new state)."""
        self._check_ids(ids, 2)
        B, T = ids.shape
        if state is not None and state.batch_size != B:
            raise ValueError(f"state is for batch {state.batch_size}, ids have batch {B}")
        pos = state.pos if state is not None else torch.zeros(B, dtype=torch.long, device=ids.device)
        x = self.embed(ids)  # [B, T, D]
        slopes, decays = [], []
        for i, block in enumerate(self.blocks):
            s0 = state.slope[i] if state is not None else None
            d0 = state.decay[i] if state is not None else None
            x, s, d = block(x, s0, d0, pos, sparse=sparse, trace=trace)
            slopes.append(s)
            decays.append(d)
        logits = self.lm_head(self.norm(x))
        new_pos = pos + T
        return logits, MCSDState(torch.stack(slopes), torch.stack(decays), new_pos, self._normalizer(new_pos))

    def embed_ids(self, ids: Tensor) -> Tensor:
        """The residual stream entering layer 0. ids: [B, T] -> [B, T, D]."""
        self._check_ids(ids, 2)
        return self.embed(ids)

    def run_layers(self, x: Tensor, start: int = 0, stop: int | None = None, *, trace: NeuronTrace | None = None) -> Tensor:
        """Layers ``start`` .. ``stop - 1`` of the chunked form from an empty state, on the
        residual stream x [B, T, D] entering layer ``start`` -> the stream leaving ``stop - 1``.

        ``head(run_layers(run_layers(embed_ids(ids), 0, j), j))`` computes exactly (bitwise)
        what ``forward(ids)`` does: a caller can keep the stream at a layer and resume there.
        """
        pos = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for block in self.blocks[start:stop]:
            x, _, _ = block(x, None, None, pos, trace=trace)
        return x

    def head(self, x: Tensor) -> Tensor:
        """Final norm and output projection. x: [B, T, D] -> logits [B, T, V]."""
        return self.lm_head(self.norm(x))

    def _normalizer(self, pos: Tensor) -> Tensor:
        """Z_n [B, C] for counts ``pos`` [B], in the scan precision (>= fp32)."""
        dt = torch.float64 if self.dtype == torch.float64 else torch.float32
        return self.blocks[0].mixer.normalizer(pos, dt)

    def step(self, ids_t: Tensor, state: MCSDState, *, sparse: SparseSpec | None = None) -> tuple[Tensor, MCSDState]:
        """Recurrent form: one token per sequence. ids_t: [B] -> (logits [B, V], new state).

        ``state`` is not modified. Without autograd, the new state's sums are written layer by
        layer into two buffers allocated once for the step (no stack), Z_n comes from the
        state (no exponential) and the mixers share one scratch buffer.
        """
        self._check_ids(ids_t, 1)
        if state.batch_size != ids_t.shape[0]:
            raise ValueError(f"state is for batch {state.batch_size}, ids_t has batch {ids_t.shape[0]}")
        x = self.embed(ids_t)  # [B, D]
        z = state.z if state.z is not None else self._normalizer(state.pos)  # [B, C]
        inv_z = self.blocks[0].mixer.inverse_normalizer(z).to(x.dtype)
        if torch.is_grad_enabled():  # autograd records the step: plain functional form
            slopes, decays = [], []
            for i, block in enumerate(self.blocks):
                x, s, d = block.step(x, state.slope[i], state.decay[i], state.pos, sparse=sparse, inv_z=inv_z)
                slopes.append(s)
                decays.append(d)
            new_slope, new_decay = torch.stack(slopes), torch.stack(decays)
        else:
            new_slope, new_decay = torch.empty_like(state.slope), torch.empty_like(state.decay)
            mix = torch.empty(x.shape[0], 2 * self.config.d_model, device=x.device, dtype=x.dtype)
            fused = self._fused_decode(x, state, sparse)
            if fused is not None:  # one kernel sequence per layer, the same math as block.step
                x = self.decode_kernel(x, state.slope, state.decay, inv_z, *fused, (new_slope, new_decay, mix))
            else:
                for i, block in enumerate(self.blocks):
                    x, _, _ = block.step(x, state.slope[i], state.decay[i], state.pos, sparse=sparse, inv_z=inv_z,
                                         out=(new_slope[i], new_decay[i], mix))
        logits = self.lm_head(self.norm(x))
        new_z = self.blocks[0].mixer.next_normalizer(z)
        return logits, MCSDState(new_slope, new_decay, state.pos + 1, new_z)

    def _fused_decode(self, x: Tensor, state: MCSDState, sparse: SparseSpec | None):
        """(per-layer weights, (e^{-b}, a, eps, k)) for :func:`~synclearn.model.decode_step.layers_step`,
        or None when this step must take the module path: a neuron context (trace, overrides,
        pause hook) is in force, a module was replaced (LoRA), the precision is below fp32, or
        the sparse case has no fused form (batch > 1, ``mode="topk"``, no predictor)."""
        if current_neuron_context() is not None or x.dtype not in (torch.float32, torch.float64):
            return None
        if state.slope.dtype != x.dtype:
            return None
        d_ff = self.config.d_ff
        k = d_ff if sparse is None else min(sparse.k, d_ff)
        if k < d_ff and (x.shape[0] != 1 or sparse.mode != "predictor" or self.config.predictor_rank == 0):
            return None
        mixer = self.blocks[0].mixer
        consts = (*mixer.step_factors(x.device, x.dtype), self.config.norm_eps, k)
        weights = [b.decode_weights() for b in self.blocks]
        return None if any(w is None for w in weights) else (weights, consts)

    def compile_decode(self, enabled: bool = True) -> None:
        """Run the inference decode step's layers through ``torch.compile`` (CPU needs a C++
        compiler; without one the first step warns and stays eager). Same results up to float
        rounding; the first steps of each new shape pay the compilation."""
        self.decode_kernel.compile(enabled)

    def generate(self, prompt: str | list[int], **kwargs: Any):
        """Generate a continuation; see :func:`synclearn.model.generate.generate` for options."""
        from synclearn.model.generate import generate

        return generate(self, prompt, **kwargs)
