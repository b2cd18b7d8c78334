"""The selectable-neuron MLP: brain-like activation with real zeros.

Neuron i of a layer is row i of ``up.weight`` [d_ff, D] and column i of ``down.weight``
[D, d_ff]. Storage is neuron-major (as in PowerInfer / LLM-in-a-Flash bundles): ``down.weight``
is the transposed view of a contiguous [d_ff, D] tensor, so neuron i's input row and output
row are each one contiguous run of D numbers and gathering k neurons is two contiguous
``index_select`` calls. The logical shapes (and ``nn.Linear`` modules, so peft LoRA attaches)
are unchanged; :meth:`SelectableMLP.neuron_rows` gives the [d_ff, D] views.

The activation is squared ReLU, h = relu(x W_up^T)^2, so an input really
switches most neurons off (exact zeros), and a neuron that is off contributes nothing
to the output and receives no gradient.

Two ways to run it:

* dense (the reference): every neuron computed;
* sparse (inference): per token, only k selected neurons are computed. They are chosen by
  ``mode="topk"`` (the k largest pre-activations: the up projection is computed in full,
  the down projection only for k columns) or ``mode="predictor"`` (a low-rank predictor
  d -> r -> d_ff scores neurons first, as in Deja Vu / PowerInfer, and only the k chosen
  rows and columns are computed). With k = d_ff both equal the dense path.

What a call activated is reported through a :class:`NeuronTrace`, and a learner replaces a
layer's computation with its own (the plastic slices) through :func:`neuron_context`. Both
travel with the call -- an argument or a context variable, which every thread has its own
copy of -- never as module state, so concurrent serving and learning cannot mix.

:class:`NeuronLayout` names how an MLP's neurons map onto its weights; it is what lets one
learner update the neurons of MCSD's squared-ReLU MLP and of a Llama-style gated MLP alike.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SparseMode = Literal["topk", "predictor"]


@dataclass(frozen=True)
class SparseSpec:
    """Sparse inference: compute ``k`` neurons per token, chosen by ``mode``."""

    k: int
    mode: SparseMode = "topk"

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"SparseSpec.k={self.k!r}: expected a positive integer")
        if self.mode not in ("topk", "predictor"):
            raise ValueError(f"SparseSpec.mode={self.mode!r}: expected 'topk' or 'predictor'")

    @classmethod
    def share_of(cls, model: Any, share: float, mode: SparseMode = "predictor") -> "SparseSpec":
        """``share`` (0 < share <= 1) of each MLP's neurons of ``model`` (an MCSD model), at least one."""
        config = getattr(model, "config", None)
        if not hasattr(config, "d_ff") or not hasattr(model, "step"):
            raise ValueError(f"sparse decode needs an MCSD model (got {type(model).__name__})")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ValueError(f"sparse decode share={share!r}: expected a number in (0, 1]")
        if mode == "predictor" and not getattr(config, "predictor_rank", 0):
            raise ValueError("sparse decode by predictor: this model has no predictor (predictor_rank=0); "
                             "use sparse_mode=topk")
        return cls(max(1, round(share * config.d_ff)), mode)


@dataclass
class NeuronTrace:
    """Per-call record of which neurons fired, filled by each MLP the call passes through.

    Attributes:
        mask: optional [B, T] token weights; only weighted tokens count (e.g. response tokens).
        predicted: also record the predictor's view (``predicted_mass``), where there is one.
        mass: layer index -> [d_ff] float32, sum over counted tokens of |h| (the activation).
        active: layer index -> [d_ff] float32, number of counted tokens where h != 0.
        predicted_mass: layer index -> [d_ff], the same sum for relu(predictor scores)^2.
        tokens: number of counted tokens (sum of the mask).
        layers: record only these layer indices (None: every layer).
    """

    mask: Tensor | None = None
    predicted: bool = False
    layers: frozenset[int] | None = None
    mass: dict[int, Tensor] = field(default_factory=dict)
    active: dict[int, Tensor] = field(default_factory=dict)
    predicted_mass: dict[int, Tensor] = field(default_factory=dict)
    tokens: float = 0.0

    @torch.no_grad()
    def record(self, layer: int, h: Tensor, predicted: Tensor | None = None) -> None:
        """Add one layer's activations h [..., d_ff] (and predictor scores) to the record."""
        if self.layers is not None and layer not in self.layers:
            return
        hf = h.detach().reshape(-1, h.shape[-1]).float()
        w = None if self.mask is None else self.mask.reshape(-1).to(hf)
        def total(values: Tensor) -> Tensor:
            return values.sum(0) if w is None else w @ values
        _accumulate(self.mass, layer, total(hf.abs()))
        _accumulate(self.active, layer, total((hf != 0).float()))
        if predicted is not None:
            pf = squared_relu(predicted.detach().reshape(-1, h.shape[-1]).float())
            _accumulate(self.predicted_mass, layer, total(pf))
        self.tokens = float(hf.shape[0]) if w is None else float(w.sum())


def _accumulate(store: dict[int, Tensor], layer: int, value: Tensor) -> None:
    store[layer] = store[layer] + value if layer in store else value


@dataclass(frozen=True)
class NeuronLayout:
    """Where an MLP's neurons live in its weights.

    Attributes:
        in_weights: the input matrices, each [d_ff, D]; row i of each belongs to neuron i
            (squared-ReLU MLP: (up,); Llama-style: (gate, up)).
        out_weight: [D, d_ff]; column i belongs to neuron i.
        act: maps the pre-activations (one [..., k] tensor per input matrix) to h [..., k].
        in_biases: optional, one [d_ff] bias (or None) per input matrix; entry i belongs to
            neuron i's pre-activation (GPT-2, GPT-NeoX). Learners keep biases fixed.
        out_bias: optional [D] bias added to the output (shared by all neurons; fixed).

    Weights may be views (a transposed Conv1D weight, half of a fused gate-up matrix):
    ``index_select`` reads and ``index_copy_`` writes reach the module's own parameters.
    """

    in_weights: tuple[Tensor, ...]
    out_weight: Tensor
    act: Callable[..., Tensor]
    in_biases: tuple[Tensor | None, ...] = ()
    out_bias: Tensor | None = None

    def in_bias(self, j: int, idx: Tensor | None = None) -> Tensor | None:
        """The bias of input matrix ``j`` ([d_ff], or only entries ``idx``), or None."""
        b = self.in_biases[j] if j < len(self.in_biases) else None
        return b if b is None or idx is None else b.index_select(0, idx.to(b.device))

    @property
    def d_ff(self) -> int:
        return self.out_weight.shape[1]

    @property
    def out_rows(self) -> Tensor:
        """``out_weight`` as [d_ff, D] (a view; contiguous when the storage is neuron-major)."""
        return self.out_weight.t()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Dense evaluation: (output [..., D], activations h [..., d_ff])."""
        h = self.act(*(F.linear(x, w, self.in_bias(j)) for j, w in enumerate(self.in_weights)))
        return F.linear(h, self.out_weight, self.out_bias), h


MLPOverride = Callable[[Tensor], Tensor]


@dataclass
class NeuronContext:
    """What the MLPs of one call should do besides their plain computation.

    ``pause`` is called before every MLP layer runs: a learner thread uses it to yield to
    serving at layer boundaries (see :mod:`synclearn.learn.sync`).
    """

    trace: NeuronTrace | None = None
    overrides: dict[int, MLPOverride] = field(default_factory=dict)
    pause: Callable[[], None] | None = None


_CONTEXT: ContextVar[NeuronContext | None] = ContextVar("synclearn_neuron_context", default=None)


@contextlib.contextmanager
def neuron_context(
    trace: NeuronTrace | None = None,
    overrides: dict[int, MLPOverride] | None = None,
    pause: Callable[[], None] | None = None,
) -> Iterator[NeuronContext]:
    """Within this block (this thread only), MLP layer ``i`` runs ``overrides[i](x)`` instead of
    its own computation, every dense MLP records into ``trace``, and ``pause()`` runs before each
    MLP layer (inherited from an enclosing context when not given)."""
    outer = _CONTEXT.get()
    if pause is None and outer is not None:
        pause = outer.pause
    ctx = NeuronContext(trace, dict(overrides or {}), pause)
    token = _CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        _CONTEXT.reset(token)


def current_neuron_context() -> NeuronContext | None:
    return _CONTEXT.get()


def consult_context(layer_index: int) -> tuple[MLPOverride | None, NeuronTrace | None]:
    """What an MLP layer must do under the current context: run its ``pause`` hook, then
    return (its override or None, the context's trace or None)."""
    ctx = _CONTEXT.get()
    if ctx is None:
        return None, None
    if ctx.pause is not None:
        ctx.pause()
    return ctx.overrides.get(layer_index), ctx.trace


def squared_relu(x: Tensor) -> Tensor:
    return F.relu(x).square()


class LowRankPredictor(nn.Module):
    """Scores how likely each neuron is to fire: logits = W2 (W1 x) + c, rank r."""

    def __init__(self, d_model: int, rank: int, d_ff: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, rank, bias=False)
        self.score = nn.Linear(rank, d_ff, bias=True)

    def forward(self, x: Tensor) -> Tensor:  # [N, D] -> [N, d_ff]
        return self.score(self.proj(x))


class SelectableMLP(nn.Module):
    """Squared-ReLU MLP whose neurons can be selected per token.

    Args:
        d_model: input/output width D.
        d_ff: number of neurons.
        predictor_rank: rank of the active-neuron predictor (0: no predictor).
    """

    def __init__(self, d_model: int, d_ff: int, predictor_rank: int = 0, layer_index: int = 0) -> None:
        super().__init__()
        self.d_model, self.d_ff, self.layer_index = d_model, d_ff, layer_index
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)
        with torch.no_grad():  # neuron-major: [D, d_ff] logical shape over [d_ff, D] storage
            rows = torch.empty(d_ff, d_model, dtype=self.down.weight.dtype)
            rows.copy_(self.down.weight.t())
            self.down.weight = nn.Parameter(rows.t())
        self.predictor = LowRankPredictor(d_model, predictor_rank, d_ff) if predictor_rank else None

    def layout(self) -> NeuronLayout:
        return NeuronLayout((self.up.weight,), self.down.weight, squared_relu)

    def neuron_rows(self) -> tuple[Tensor, Tensor]:
        """(up [d_ff, D], down rows [d_ff, D]): neuron i is row i of both (views, contiguous)."""
        return self.up.weight, self.down.weight.t()

    def forward(self, x: Tensor, *, sparse: SparseSpec | None = None, trace: NeuronTrace | None = None) -> Tensor:
        """x: [..., D] -> [..., D]. ``sparse`` picks the sparse path; ``trace`` records activity
        (so does the trace of an enclosing :func:`neuron_context`)."""
        override, context_trace = consult_context(self.layer_index)
        if override is not None:
            return override(x)
        trace = trace or context_trace
        if sparse is not None and sparse.k < self.d_ff:
            if trace is not None:
                raise ValueError("a NeuronTrace needs the dense path (sparse=None)")
            return self.sparse_forward(x, sparse)
        h = squared_relu(self.up(x))  # [..., d_ff]
        if trace is not None:
            wanted = trace.predicted and self.predictor is not None and (trace.layers is None or self.layer_index in trace.layers)
            predicted = self.predictor(x) if wanted else None
            trace.record(self.layer_index, h, predicted)
        return self.down(h)

    def select_neurons(self, xf: Tensor, spec: SparseSpec) -> tuple[Tensor, Tensor | None]:
        """The k neurons each token uses. xf: [N, D] -> (idx [N, k], full pre-activations
        [N, d_ff] for ``mode="topk"`` (which needs them) or None)."""
        k = min(spec.k, self.d_ff)
        if spec.mode == "predictor":
            if self.predictor is None:
                raise ValueError("SparseSpec(mode='predictor') needs a model built with predictor_rank > 0")
            return self.predictor(xf).topk(k, dim=-1, sorted=False).indices, None
        pre_all = self.up(xf)  # (N, d_ff)
        return pre_all.topk(k, dim=-1, sorted=False).indices, pre_all

    def sparse_forward(self, x: Tensor, spec: SparseSpec) -> Tensor:
        """Compute only ``spec.k`` neurons per token. x: [..., D] -> [..., D].

        The rows of the union U of the tokens' selections are gathered once from the
        neuron-major weights (two contiguous ``index_select``: [U, D] each); each token's
        activations outside its own selection are zeroed with an [N, U] mask built by one
        scatter ([N, d_ff] work, never [N, k, U]). At decode (one token) U = k and no mask is
        built. ``mode="predictor"`` computes only U up rows; ``"topk"`` needs all of them.
        """
        if type(self.up) is not nn.Linear or type(self.down) is not nn.Linear:
            raise ValueError("sparse inference reads the MLP weights directly: merge adapters (e.g. LoRA) first")
        shape = x.shape
        xf = x.reshape(-1, self.d_model)  # (N, D)
        up_w, down_rows = self.neuron_rows()  # [d_ff, D] each, contiguous rows
        idx, pre_all = self.select_neurons(xf, spec)  # (N, k)
        if xf.shape[0] == 1:
            union = idx[0]  # (k,)
        else:
            own_all = torch.zeros(xf.shape[0], self.d_ff, dtype=torch.bool, device=x.device)
            own_all.scatter_(1, idx, True)  # (N, d_ff)
            union = own_all.any(0).nonzero().squeeze(1)  # (U,)
        if pre_all is None:
            pre = F.linear(xf, up_w.index_select(0, union))  # (N, U)
        else:
            pre = pre_all.index_select(1, union)
        h = squared_relu(pre)
        if xf.shape[0] > 1:  # keep each token's own k neurons only
            h = h * own_all.index_select(1, union)
        out = h @ down_rows.index_select(0, union)  # (N, D)
        return out.reshape(shape)


def masked_dense_reference(mlp: "SelectableMLP", x: Tensor, spec: SparseSpec) -> Tensor:
    """Slow reference for :meth:`SelectableMLP.sparse_forward`: the dense MLP with every
    neuron outside each token's selection zeroed. x: [..., D] -> [..., D]."""
    xf = x.reshape(-1, mlp.d_model)
    idx, _ = mlp.select_neurons(xf, spec)
    keep = torch.zeros(xf.shape[0], mlp.d_ff, dtype=xf.dtype).scatter_(1, idx, 1.0)
    h = squared_relu(F.linear(xf, mlp.up.weight)) * keep
    return F.linear(h, mlp.down.weight).reshape(x.shape)


def fit_predictor(mlp: SelectableMLP, xs: Tensor, *, steps: int = 300, lr: float = 1e-2, seed: int = 0) -> float:
    """Train ``mlp.predictor`` to name the neurons that fire for inputs ``xs`` [N, D].

    The predictor regresses the pre-activations, because sparse inference keeps the k
    neurons with the largest scores: what matters is the ranking of the strongest neurons,
    not only the sign. The squared error is weighted by ``1 + 4 relu(pre) / std(pre)``: a
    neuron that fires strongly counts several times one that is off (whose exact negative
    value changes nothing, the activation is relu^2). On the pretrained mcsd-chat base that
    weighting took held-out NLL at 10% of the neurons from +6.1% to +1.0% of dense (top-k by
    the true pre-activations: +0.8%). Only the predictor's parameters change.
    Returns the recall of the true top-k neurons among the predicted top-k on ``xs``
    (k = 10% of d_ff), a number in [0, 1].
    """
    if mlp.predictor is None:
        raise ValueError("this MLP has no predictor (predictor_rank=0)")
    xs = xs.detach().reshape(-1, mlp.d_model)
    with torch.no_grad():
        pre = mlp.up(xs)  # (N, d_ff)
        weight = 1.0 + 4.0 * F.relu(pre) / pre.std().clamp_min(1e-12)  # (N, d_ff)
    gen = torch.Generator().manual_seed(seed)
    params = list(mlp.predictor.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    batch = min(1024, xs.shape[0])
    with torch.enable_grad():
        for _ in range(steps):
            rows = torch.randint(0, xs.shape[0], (batch,), generator=gen).to(xs.device)
            loss = ((mlp.predictor(xs[rows]) - pre[rows]).square() * weight[rows]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        k = max(1, mlp.d_ff // 10)
        true = pre.topk(k, dim=-1).indices
        guess = mlp.predictor(xs).topk(k, dim=-1).indices
        hits = (true[:, :, None] == guess[:, None, :]).any(-1).float().mean()
    return float(hits)


def fit_predictors(model: nn.Module, batches: list[Tensor], *, steps: int = 300, lr: float = 1e-2, seed: int = 0) -> dict[int, float]:
    """Fit every selectable MLP's predictor of ``model`` on the inputs its MLP sees for
    ``batches`` (token ids [B, T] each), as :func:`fit_predictor` does for one MLP.

    Meant to run after (or at checkpoints of) pretraining, so a saved base ships a trained
    predictor for sparse decoding. Only predictor parameters change. Returns layer -> the
    top-10% recall :func:`fit_predictor` reports.
    """
    mlps = [m for m in model.modules() if isinstance(m, SelectableMLP) and m.predictor is not None]
    seen: dict[int, list[Tensor]] = {m.layer_index: [] for m in mlps}
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen[mod.layer_index].append(args[0].detach().reshape(-1, mod.d_model)))
             for m in mlps]
    try:
        with torch.no_grad():
            for ids in batches:
                model(ids)
    finally:
        for h in hooks:
            h.remove()
    return {m.layer_index: fit_predictor(m, torch.cat(seen[m.layer_index]), steps=steps, lr=lr, seed=seed + m.layer_index)
            for m in mlps}
