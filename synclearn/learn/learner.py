"""The Learner: one model, one deterministic learning step, three update families.

    learner = Learner(model, log, update="sparse", neuron_fraction=0.05, seed=0)
    result = learner.step([{"prompt": "...", "response": "..."}])

A step computes the loss on the response tokens, clips the gradient, refuses to commit
anything non-finite (the step is reported as skipped; weights and optimizer state are
untouched), and commits under the model's write lock (:mod:`synclearn.learn.guard`), raising
the weight version by one.

* ``"sparse"``: the neurons the batch activated most (per plastic layer, a ``neuron_fraction``
  budget; see :mod:`synclearn.learn.select`) are gathered into small leaves
  (:mod:`synclearn.learn.sparse`), updated by :class:`RowSparseAdamW`, and written back with
  ``index_copy_``. Everything else stays bitwise unchanged.
* ``"lora"``: peft LoRA adapters on the model's projections (``model.lora_targets``), AdamW.
* ``"full"``: dense AdamW on every weight (the baseline).

Same model, seed and examples give bitwise the same weights.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from synclearn.learn.batch import Batch, at_least_float32, build_batch
from synclearn.learn.guard import guard_for
from synclearn.learn.optim import RowSparseAdamW, RowSparseSGD
from synclearn.learn.select import SELECTORS
from synclearn.learn.sparse import gather_slice, plastic_forward, write_back
from synclearn.model.neurons import NeuronTrace, neuron_context

if TYPE_CHECKING:
    from synclearn.learn.sync import LearnerHandle

UPDATES = ("sparse", "lora", "full")
OPTIMIZERS = ("adamw", "sgd")
DEFAULT_LR = {"sparse": 1e-3, "lora": 3e-3, "full": 1e-3}


@dataclass
class StepResult:
    """What one ``Learner.step`` did.

    Attributes:
        loss: loss before the update (None when it could not be computed).
        version: weight version after the step (unchanged when skipped).
        touched: layer -> number of neurons changed (sparse) or {} (lora/full).
        neurons: layer -> the changed neuron indices (sparse).
        skipped: True when nothing was committed; ``reason`` says why.
        tokens: response tokens in the batch. ids: interaction ids of the examples.
        grad_norm: gradient norm before clipping. seconds: wall time of the step.
        scratch_bytes: memory the step allocated for learning and freed after it: gathered
            slices and their gradients (sparse), or the gradients (lora/full).
        example_losses: each example's mean loss over its response tokens (before the update).
    """

    loss: float | None
    version: int
    touched: dict[int, int] = field(default_factory=dict)
    neurons: dict[int, list[int]] = field(default_factory=dict)
    skipped: bool = False
    reason: str | None = None
    tokens: int = 0
    ids: list[int | None] = field(default_factory=list)
    grad_norm: float | None = None
    seconds: float = 0.0
    scratch_bytes: int = 0
    example_losses: list[float] = field(default_factory=list)


class Learner:
    """Learns in place on ``model`` (MCSD or a wrapped HF causal LM).

    Args:
        model: the model to change; serving may use it at the same time.
        log: optional :class:`~synclearn.memory.InteractionLog` to learn from.
        update: "sparse", "lora" or "full".
        neuron_fraction: sparse budget per plastic layer, as a share of its neurons.
        seed: seeds neuron selection (per committed step), so runs repeat bitwise.
        lr: learning rate (default per family: sparse 1e-3 x 512 / model width, lora 3e-3, full 1e-3).
        betas, eps, weight_decay: AdamW settings.
        clip_norm: gradient clipping threshold (global L2 norm; 0 disables).
        plastic_layers: how many of the last layers may change (sparse), or explicit indices.
        optimizer: "adamw" or "sgd" (plain SGD on the selected rows, no moments; sparse and dense).
        selector: a name in :data:`~synclearn.learn.select.SELECTORS` or a callable with the
            selector signature (see :mod:`synclearn.learn.select`).
        exploration: share of the sparse budget drawn from active but not top neurons.
        optimizer_capacity: neurons with optimizer moments per layer (default 2x the budget).
        lora_rank, lora_alpha, lora_targets: LoRA settings (targets default to the model's).
        max_seq_len: longest training sequence; longer examples keep their end.
        journal: a :class:`~synclearn.memory.journal.StepJournal` (or a directory for one) that
            records every committed step for exact forgetting; None keeps no journal.
        memory: a memory manager; stored as ``learner.memory``, and ``memory.bind(learner)`` is
            called once here when it has one.
    """

    def __init__(
        self,
        model: nn.Module,
        log: Any = None,
        *,
        update: str = "sparse",
        neuron_fraction: float = 0.05,
        seed: int = 0,
        lr: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        clip_norm: float = 1.0,
        plastic_layers: int | Sequence[int] = 4,
        optimizer: str = "adamw",
        selector: Any = "topk",
        exploration: float = 0.1,
        optimizer_capacity: int | None = None,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_targets: Sequence[str] | None = None,
        max_seq_len: int = 512,
        journal: Any = None,
        memory: Any = None,
    ) -> None:
        n_layers = len(model.neuron_layouts())
        bad = []
        if update not in UPDATES:
            bad.append(f"update={update!r} (expected one of {UPDATES})")
        if not (isinstance(neuron_fraction, (int, float)) and 0 < neuron_fraction <= 1):
            bad.append(f"neuron_fraction={neuron_fraction!r} (expected 0 < fraction <= 1)")
        if not callable(selector) and selector not in SELECTORS:
            bad.append(f"selector={selector!r} (expected one of {sorted(SELECTORS)} or a callable)")
        if optimizer not in OPTIMIZERS:
            bad.append(f"optimizer={optimizer!r} (expected one of {OPTIMIZERS})")
        if not 0 <= exploration < 1:
            bad.append(f"exploration={exploration!r} (expected 0 <= exploration < 1)")
        if clip_norm < 0:
            bad.append(f"clip_norm={clip_norm!r} (expected >= 0)")
        if lr is not None and not lr > 0:
            bad.append(f"lr={lr!r} (expected > 0)")
        if not isinstance(max_seq_len, int) or max_seq_len < 2:
            bad.append(f"max_seq_len={max_seq_len!r} (expected an integer >= 2)")
        if isinstance(plastic_layers, int):
            if plastic_layers < 1:
                bad.append(f"plastic_layers={plastic_layers!r} (expected >= 1 or a list of layer indices)")
            layers = list(range(max(0, n_layers - plastic_layers), n_layers))
        else:
            layers = sorted(set(int(i) for i in plastic_layers))
            if not layers or any(not 0 <= i < n_layers for i in layers):
                bad.append(f"plastic_layers={list(plastic_layers)!r} (expected indices in [0, {n_layers}))")
        if bad:
            raise ValueError("invalid Learner settings: " + "; ".join(bad))

        self.model, self.log, self.update, self.seed = model, log, update, seed
        self.neuron_fraction, self.selector, self.exploration = neuron_fraction, selector, exploration
        self.clip_norm, self.max_seq_len = clip_norm, max_seq_len
        self.plastic_layers = layers
        self.guard = guard_for(model)
        self.lr = lr if lr is not None else DEFAULT_LR[update]
        if lr is None and update == "sparse":
            # an Adam step moves every coordinate of a selected neuron by ~lr, so its effect on the
            # neuron's pre-activation grows with the width D: scale the default as 1 / D
            width = model.neuron_layouts()[layers[0]].in_weights[0].shape[1]
            self.lr = DEFAULT_LR["sparse"] * 512 / width
        self._protected: dict[int, Tensor] = {}  # layer -> bool mask of neurons never selected
        self._lr_scale: dict[int, Tensor] = {}  # per-neuron learning-rate factors (consolidation damping)
        self._background: dict[int, Tensor] = {}  # per-neuron background statistics for the selector
        self._observers: list[Any] = []  # fn(result, grads) after every committed step
        self._regularizers: list[Any] = []  # callables -> scalar added to the loss (EWC/MAS for LoRA/full)
        self._persist: Any = None  # callable writing a checkpoint; forget() calls it at its commit point
        self._handle: Any = None
        self._builder: Any = None
        self.optimizer_name = optimizer
        self.committed_steps = 0
        self._lock = threading.RLock()  # one step (or forget) at a time
        self.pad_id = getattr(getattr(model, "tokenizer", None), "PAD", 0) or 0
        if journal is not None and not hasattr(journal, "record"):
            from synclearn.memory.journal import StepJournal

            journal = StepJournal(journal)
        self._journal = journal
        self.forget_epoch: str | None = None  # id of the last exact forget (persisted with the state)

        for p in model.parameters():
            p.requires_grad_(False)
        if update == "sparse":
            layouts = model.neuron_layouts()
            self.budget = {i: max(1, round(neuron_fraction * layouts[i].d_ff)) for i in layers}
            capacity = optimizer_capacity or 2 * max(self.budget.values())
            if capacity < max(self.budget.values()):
                raise ValueError(f"optimizer_capacity={capacity} is below the per-layer neuron budget "
                                 f"{max(self.budget.values())}; it must hold at least one step's neurons")
            if optimizer == "sgd":
                self.optimizer: Any = RowSparseSGD(self.lr, weight_decay)
            else:
                self.optimizer = RowSparseAdamW(self.lr, betas, eps, weight_decay, capacity)
            self.params: list[Tensor] = []
        else:
            if update == "lora":
                self._inject_lora(lora_rank, lora_alpha, lora_targets)
                self.params = [p for n, p in model.named_parameters() if "lora_" in n]
            else:
                self.params = [p for n, p in model.named_parameters() if ".predictor." not in n]
            for p in self.params:
                p.requires_grad_(True)
            self.budget = {}
            if optimizer == "sgd":
                self.optimizer = torch.optim.SGD(self.params, lr=self.lr, weight_decay=weight_decay)
            else:
                self.optimizer = torch.optim.AdamW(self.params, lr=self.lr, betas=betas, eps=eps,
                                                   weight_decay=weight_decay)
        self.memory = memory
        if memory is not None and hasattr(memory, "bind"):
            memory.bind(self)

    def _inject_lora(self, rank: int, alpha: float, targets: Sequence[str] | None) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        targets = list(targets or self.model.lora_targets)
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # LoRA A init is random: seed it for bitwise repeats
            root = getattr(self.model, "hf", self.model)
            inject_adapter_in_model(config, root)

    # -- consolidation hooks (the memory manager calls these) -----------------------------------
    def _d_ff(self, layer: int) -> int:
        layouts = self.model.neuron_layouts()
        if not isinstance(layer, int) or not 0 <= layer < len(layouts):
            raise ValueError(f"layer={layer!r} (expected a layer index in [0, {len(layouts)}))")
        return layouts[layer].d_ff

    def _neuron_mask(self, layer: int, neurons: Tensor | Sequence[int]) -> Tensor:
        d_ff = self._d_ff(layer)
        idx = torch.as_tensor(neurons, dtype=torch.long).flatten().cpu()
        if len(idx) and (idx.min() < 0 or idx.max() >= d_ff):
            raise ValueError(f"neuron ids of layer {layer} must be in [0, {d_ff}); got {idx.min()}..{idx.max()}")
        mask = torch.zeros(d_ff, dtype=torch.bool)
        mask[idx] = True
        return mask

    def _per_neuron(self, layer: int, values: Tensor | None, what: str, dtype: torch.dtype | None) -> Tensor | None:
        if values is None:
            return None
        d_ff = self._d_ff(layer)
        values = torch.as_tensor(values).detach().cpu()
        if values.shape != (d_ff,):
            raise ValueError(f"{what} of layer {layer} has shape {tuple(values.shape)}; expected ({d_ff},)")
        return values.to(dtype).clone() if dtype is not None else values.clone()

    def protect(self, layer: int, neurons: Tensor | Sequence[int]) -> None:
        """Protect ``neurons`` of ``layer``: no sparse step will select them."""
        with self._lock:
            mask = self._neuron_mask(layer, neurons)
            if layer in self._protected:
                mask |= self._protected[layer]
            self._protected[layer] = mask

    lock = protect  # the older name

    def unprotect(self, layer: int, neurons: Tensor | Sequence[int]) -> None:
        """Let ``neurons`` of ``layer`` be selected again."""
        with self._lock:
            mask = self._neuron_mask(layer, neurons)
            if layer in self._protected:
                self._protected[layer] = self._protected[layer] & ~mask

    def set_protected(self, layer: int, mask: Tensor | None) -> None:
        """Replace the protected set of ``layer`` by ``mask`` (BoolTensor [d_ff]); None clears it."""
        with self._lock:
            mask = self._per_neuron(layer, mask, "the protected mask", torch.bool)
            if mask is None:
                self._protected.pop(layer, None)
            else:
                self._protected[layer] = mask

    def protected(self, layer: int) -> Tensor | None:
        """BoolTensor [d_ff] of ``layer``'s protected neurons (a copy), or None when none ever were."""
        mask = self._protected.get(layer)
        return None if mask is None else mask.clone()

    def set_lr_scale(self, layer: int, scale: Tensor | None) -> None:
        """Per-neuron learning-rate factors [d_ff] of ``layer`` (e.g. damping); None removes them."""
        with self._lock:
            scale = self._per_neuron(layer, scale, "the lr scale", torch.float32)
            if scale is None:
                self._lr_scale.pop(layer, None)
            else:
                self._lr_scale[layer] = scale

    def lr_scale(self, layer: int) -> Tensor | None:
        """The per-neuron learning-rate factors of ``layer`` (a copy), or None."""
        scale = self._lr_scale.get(layer)
        return None if scale is None else scale.clone()

    def set_background(self, layer: int, stats: Tensor | None) -> None:
        """Per-neuron background statistics [d_ff] of ``layer`` handed to the selector; None removes them."""
        with self._lock:
            stats = self._per_neuron(layer, stats, "the background statistics", None)
            if stats is None:
                self._background.pop(layer, None)
            else:
                self._background[layer] = stats

    def background(self, layer: int) -> Tensor | None:
        """The background statistics of ``layer`` (a copy), or None."""
        stats = self._background.get(layer)
        return None if stats is None else stats.clone()

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

    def set_persist(self, fn: Any) -> None:
        """``fn()`` writes a checkpoint of this learner; an exact forget calls it at its commit point."""
        self._persist = fn

    @property
    def persist(self) -> Any:
        return self._persist

    @contextlib.contextmanager
    def journaling_to(self, journal: Any) -> Iterator[None]:
        """Record the steps of this block into ``journal`` instead (exclusive)."""
        with self._lock:
            saved, self._journal = self._journal, journal
            try:
                yield
            finally:
                self._journal = saved

    @property
    def journal(self) -> Any:
        """The :class:`~synclearn.memory.journal.StepJournal`, or None."""
        return self._journal

    # -- serving and learning together ---------------------------------------------------------
    def attach(self, session: Any, **options: Any) -> "LearnerHandle":
        """Start learning in the background from ``session``'s log while it keeps serving.
        ``options`` are :class:`~synclearn.learn.sync.LearnerHandle` settings."""
        from synclearn.learn.sync import LearnerHandle

        if self._handle is not None and self._handle.attached:
            raise RuntimeError("this learner is already attached; detach() it first")
        self._handle = LearnerHandle(self, session, **options)
        return self._handle

    def run(self, steps: int, *, builder: Any = None, **builder_options: Any) -> list[StepResult]:
        """Learn ``steps`` batches from the log, synchronously and deterministically.

        Args:
            steps: number of batches.
            builder: a :class:`~synclearn.memory.ReplayBatchBuilder` (default: one over
                ``self.log`` with ``builder_options``, kept across calls).
        """
        if builder is None:
            if self.log is None:
                raise ValueError("Learner.run needs a log: Learner(model, log, ...)")
            if self._builder is None:
                from synclearn.memory.replay import ReplayBatchBuilder

                builder_options.setdefault("seed", self.seed)
                self._builder = ReplayBatchBuilder(self.log, **builder_options)
            builder = self._builder
        results = []
        for _ in range(steps):
            batch = builder.next_batch()
            if not batch:
                break
            result = self.step(batch)
            losses = result.example_losses if len(result.example_losses) == len(batch) else None
            builder.commit(batch, losses)
            results.append(result)
        return results

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """No step, forget or other exclusive block runs while this block does (reentrant):
        e.g. to checkpoint weights and optimizer rows from the same step."""
        with self._lock:
            yield

    # -- forgetting ------------------------------------------------------------------------------
    def forget(self, ids: Sequence[int] | None = None, *, session_id: str | None = None, match: str | None = None,
               mode: str = "exact", **options: Any):
        """Forget records: out of the log for real, out of the weights exactly or approximately.
        Returns a verified :class:`~synclearn.learn.forget.ForgetReport`; see that module."""
        from synclearn.learn.forget import forget

        return forget(self, ids=ids, session_id=session_id, match=match, mode=mode, **options)

    def recover(self) -> str:
        """Finish or discard a forget interrupted by a crash (call after loading state)."""
        from synclearn.learn.forget import recover

        with self._lock:
            return recover(self)

    # -- the step ----------------------------------------------------------------------------------
    def step(self, examples: Sequence[Any]) -> StepResult:
        """Learn from ``examples`` (see :mod:`synclearn.learn.batch` for their form)."""
        batch = build_batch(self.model.tokenizer, examples, max_seq_len=self.max_seq_len,
                            pad_id=self.pad_id, device=self.model.device)
        return self.step_batch(batch, list(examples))

    def step_batch(self, batch: Any, examples: Any = None, *, record: bool = True) -> StepResult:
        """Learn from a prepared batch (a :class:`~synclearn.learn.batch.Batch`, or a
        :class:`~synclearn.learn.batch.LabelBatch` for classifiers). ``examples`` is what the
        journal records to re-run the step (default: the batch itself); ``record=False`` keeps
        the step out of the journal (approximate unlearning)."""
        with self._lock:
            t0 = time.perf_counter()
            index = self.committed_steps
            if self.update == "sparse":
                result, undo = self._sparse_step(batch)
            else:
                result, undo = self._dense_step(batch)
            if undo is not None and record and self._journal is not None:
                from synclearn.memory.journal import StepRecord

                self._journal.record(StepRecord(index, examples if examples is not None else [batch], undo))
            result.tokens, result.ids, result.seconds = batch.tokens, batch.ids, time.perf_counter() - t0
            return result

    def _skip(self, loss: Tensor | None, reason: str, grad_norm: float | None = None) -> tuple[StepResult, None]:
        value = None if loss is None else float(loss.detach())
        return StepResult(value, self.guard.version, skipped=True, reason=reason, grad_norm=grad_norm), None

    def _clip(self, grads: list[Tensor]) -> tuple[list[Tensor], float]:
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(at_least_float32(g)) for g in grads])))
        if self.clip_norm and norm > self.clip_norm:
            scale = self.clip_norm / (norm + 1e-6)
            grads = [g * scale for g in grads]
        return grads, norm

    def _select(self, batch: Batch) -> dict[int, Tensor] | str:
        """Neurons to update per plastic layer, or the reason the batch cannot be learned."""
        fn, source = (self.selector, "mass") if callable(self.selector) else SELECTORS[self.selector]
        trace = NeuronTrace(mask=batch.mask, predicted=source == "predicted_mass")
        with torch.no_grad(), neuron_context(trace=trace):
            self.model(batch.inputs)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.committed_steps)
        chosen = {}
        for layer in self.plastic_layers:
            scores = getattr(trace, source).get(layer)
            if scores is None:
                raise RuntimeError(f"layer {layer} recorded no {source}; selector {self.selector!r} needs it")
            if not torch.isfinite(scores).all():
                return f"non-finite activations in layer {layer}"
            chosen[layer] = fn(scores, self.budget[layer], locked=self._protected.get(layer),
                               exploration=self.exploration, generator=gen, background=self._background.get(layer))
        return chosen

    def _sparse_step(self, batch: Batch) -> tuple[StepResult, dict | None]:
        layouts = self.model.neuron_layouts()
        selected = self._select(batch)
        if isinstance(selected, str):
            return self._skip(None, selected)
        chosen = {layer: idx for layer, idx in selected.items() if len(idx)}
        if not chosen:
            return self._skip(None, "no neuron of a plastic layer fired for this batch")
        slices = {layer: gather_slice(layouts[layer], layer, idx) for layer, idx in chosen.items()}
        overrides = {layer: (lambda x, lo=layouts[layer], sl=sl: plastic_forward(x, lo, sl)) for layer, sl in slices.items()}
        with neuron_context(overrides=overrides):
            loss, per_example = batch.loss(self.model(batch.inputs))
        if not torch.isfinite(loss):
            return self._skip(loss, "non-finite loss")
        leaves = [leaf for sl in slices.values() for leaf in sl.leaves]
        grads = list(torch.autograd.grad(loss, leaves))
        if not all(torch.isfinite(g).all() for g in grads):
            return self._skip(loss, "non-finite gradient")
        grads, norm = self._clip(grads)
        plans, flat_grads, start = [], {}, 0
        for layer, sl in slices.items():
            n = len(sl.leaves)
            flat_grads[layer] = sl.flat_grads(grads[start : start + n])
            start += n
            scale = self._lr_scale[layer][sl.idx.cpu()].to(sl.idx.device) if layer in self._lr_scale else None
            plans.append(self.optimizer.plan(layer, sl.idx, sl.flat(), flat_grads[layer], lr_scale=scale))
        if not all(torch.isfinite(p.new_params).all() for p in plans):
            return self._skip(loss, "non-finite update", norm)
        undo = None
        if self._journal is not None:
            undo = {"kind": "sparse", "layers": {
                p.layer: {"idx": slices[p.layer].idx.cpu(), "rows": slices[p.layer].flat().cpu(),
                          "optimizer": self.optimizer.snapshot(p)} for p in plans}}
        with self.guard.write() as version:
            for plan in plans:
                write_back(layouts[plan.layer], slices[plan.layer].idx, plan.new_params)
                self.optimizer.commit(plan)
            self._sync_device()
        self.committed_steps += 1
        scratch = sum(2 * sl.nbytes() for sl in slices.values())  # leaves + their gradients
        result = StepResult(float(loss.detach()), version, {l: len(i) for l, i in chosen.items()},
                            {l: i.tolist() for l, i in chosen.items()}, grad_norm=norm, scratch_bytes=scratch,
                            example_losses=per_example.tolist(), ids=list(batch.ids))
        for observe in list(self._observers):
            observe(result, flat_grads)
        return result, undo

    def _dense_step(self, batch: Batch) -> tuple[StepResult, dict | None]:
        loss, per_example = batch.loss(self.model(batch.inputs))
        for regularizer in self._regularizers:
            loss = loss + regularizer()
        if not torch.isfinite(loss):
            return self._skip(loss, "non-finite loss")
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
        if not all(torch.isfinite(g).all() for g in grads):
            return self._skip(loss, "non-finite gradient")
        grads, norm = self._clip(grads)
        undo = None
        if self._journal is not None:
            undo = {"kind": "dense", "params": [p.detach().cpu().clone() for p in self.params],
                    "optimizer": copy.deepcopy(self.optimizer.state_dict())}
        with self.guard.write() as version:
            for p, g in zip(self.params, grads):
                p.grad = g
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self._sync_device()
        self.committed_steps += 1
        scratch = sum(g.nbytes for g in grads)
        result = StepResult(float(loss.detach()), version, grad_norm=norm, scratch_bytes=scratch,
                            example_losses=per_example.tolist(), ids=list(batch.ids))
        for observe in list(self._observers):
            observe(result, {})
        return result, undo

    def undo(self, undo: dict) -> None:
        """Put back what one journaled step overwrote (weights and optimizer rows), under the
        write lock. Steps must be undone newest first."""
        with self.guard.write():
            if undo["kind"] == "sparse":
                layouts = self.model.neuron_layouts()
                for layer, rec in undo["layers"].items():
                    write_back(layouts[layer], rec["idx"], rec["rows"].to(self.model.device))
                    self.optimizer.restore(layer, rec["optimizer"])
            else:
                with torch.no_grad():
                    for p, old in zip(self.params, undo["params"]):
                        p.copy_(old.to(p.device))
                self.optimizer.load_state_dict(undo["optimizer"])
            self._sync_device()

    def _sync_device(self) -> None:
        """On CUDA, the writes must have landed before the write lock is released."""
        if self.model.device.type == "cuda":
            torch.cuda.current_stream().synchronize()

    # -- state -------------------------------------------------------------------------------------
    def training_state_bytes(self) -> int:
        """Bytes held between steps for learning: optimizer state, plus the adapter weights
        for LoRA (they exist only to learn)."""
        if self.update == "sparse":
            return self.optimizer.state_bytes()
        state = sum(t.nbytes for s in self.optimizer.state.values() for t in s.values() if isinstance(t, Tensor))
        return state + (sum(p.nbytes for p in self.params) if self.update == "lora" else 0)

    def state_dict(self) -> dict:
        return {"committed_steps": self.committed_steps, "optimizer": self.optimizer.state_dict(),
                "locked": {k: v.clone() for k, v in self._protected.items()}, "update": self.update,
                "lr_scale": {k: v.clone() for k, v in self._lr_scale.items()}, "forget_epoch": self.forget_epoch}

    def load_state_dict(self, state: dict) -> None:
        if state["update"] != self.update:
            raise ValueError(f"state is for update={state['update']!r}, this learner uses {self.update!r}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.committed_steps = int(state["committed_steps"])
        self._protected = {int(k): v.clone() for k, v in state["locked"].items()}
        self._lr_scale = {int(k): v.clone() for k, v in state.get("lr_scale", {}).items()}
        self.forget_epoch = state.get("forget_epoch")


