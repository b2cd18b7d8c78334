"""The Learner: one model, one deterministic learning step, update rules as plug-ins.

    learner = Learner(model, log, update="sparse", neuron_fraction=0.05, seed=0)
    result = learner.step([{"prompt": "...", "response": "..."}])

A step builds the batch, asks the update rule (:mod:`synclearn.learn.updates`) for the loss,
adds the regularizers, differentiates, clips the gradient, refuses to commit anything
non-finite (the step is reported as skipped; weights and optimizer state are untouched),
commits under the model's write lock (:mod:`synclearn.learn.guard`, raising the weight
version by one), journals the step and calls the step observers. The Learner never asks
which family it runs:

* ``"sparse"``: the neurons the batch activated most (per plastic layer, a ``neuron_fraction``
  budget; see :mod:`synclearn.learn.select`), row-sparse AdamW or SGD (``optimizer=``);
* ``"lora"``: peft LoRA adapters on the model's projections (``model.lora_targets``);
* ``"full"``: dense AdamW/SGD on every weight (the baseline).

The memory manager steers it only through public calls: ``protect``/``unprotect``/
``set_protected``, ``set_lr_scale``, ``set_background``, ``add_step_observer``,
``add_regularizer``. Same model, seed and examples give bitwise the same weights.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from synclearn.learn.aside import AsideWork
from synclearn.learn.batch import at_least_float32, build_batch
from synclearn.learn.controls import LearnerControls
from synclearn.learn.guard import guard_for
from synclearn.learn.select import SELECTORS
from synclearn.learn.updates import UPDATE_RULES, NeuronControls, UpdateConfig

if TYPE_CHECKING:
    from synclearn.learn.sync import LearnerHandle

logger = logging.getLogger(__name__)
UPDATES = tuple(UPDATE_RULES)
OPTIMIZERS = ("adamw", "sgd")


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
        example_reproduced: per example, whether the model already gave its target before the
            update (every response token its most likely one: greedy decoding reproduces it).
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
    example_reproduced: list[bool] = field(default_factory=list)


class Learner(LearnerControls, AsideWork):
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
        self.clip_norm, self.max_seq_len, self.optimizer_name = clip_norm, max_seq_len, optimizer
        self.plastic_layers = layers
        self.guard = guard_for(model)
        if lr is None:
            lr = UPDATE_RULES[update].default_lr(model, layers)
        self.committed_steps = 0
        self.forget_epoch: str | None = None  # id of the last exact forget (persisted with the state)
        self.pad_id = getattr(getattr(model, "tokenizer", None), "PAD", 0) or 0
        self._lock = threading.RLock()  # one step (or forget) at a time
        self._controls = NeuronControls()
        self._observers: list[Any] = []  # fn(result, grads) after every committed step
        self._regularizers: list[Any] = []  # fn() -> scalar added to the loss (EWC/MAS for LoRA/full)
        self._persist: Any = None  # fn() writing a checkpoint; forget() calls it at its commit point
        self.anchors: Any = None  # AnchorSet that {"anchor": k} examples index (set_anchors)
        self.memory_state: dict | None = None  # the memory manager's state a checkpoint restored
        self._handle: Any = None
        self._builder: Any = None
        if journal is not None and not hasattr(journal, "record"):
            from synclearn.memory.journal import StepJournal

            journal = StepJournal(journal)
        self._journal = journal
        for p in model.parameters():
            p.requires_grad_(False)
        config = UpdateConfig(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, optimizer=optimizer,
                              plastic_layers=layers, neuron_fraction=neuron_fraction, selector=selector,
                              exploration=exploration, optimizer_capacity=optimizer_capacity, lora_rank=lora_rank,
                              lora_alpha=lora_alpha, lora_targets=lora_targets, seed=seed)
        self._rule = UPDATE_RULES[update](model, config, self._controls)
        self.memory = memory
        if memory is not None and hasattr(memory, "bind"):
            memory.bind(self)

    # -- what the update rule holds ---------------------------------------------------------------
    @property
    def optimizer(self) -> Any:
        return self._rule.optimizer

    @property
    def params(self) -> list[Tensor]:
        """The dense trainable tensors ([] for sparse updates)."""
        return self._rule.params

    @property
    def budget(self) -> dict[int, int]:
        """Neurons per plastic layer one sparse step may change ({} for dense updates)."""
        return self._rule.budget

    @property
    def lr(self) -> float:
        return self._rule.lr

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
        """Learn ``steps`` batches from the log, synchronously and deterministically. A skipped
        step leaves its new rows unlearned (:meth:`~synclearn.memory.ReplayBatchBuilder.reject`).

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
            if result.skipped:
                builder.reject(batch, result.reason)
            else:
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

    def set_forget_epoch(self, epoch: str | None) -> None:
        """Tag the state with the id of the exact forget it includes (see :mod:`.forget`)."""
        self.forget_epoch = epoch

    def set_lr(self, lr: float) -> None:
        """Change the learning rate of the update rule (e.g. for unlearning on a fork)."""
        self._rule.lr = lr

    # -- the step ----------------------------------------------------------------------------------
    def step(self, examples: Sequence[Any]) -> StepResult:
        """Learn from ``examples`` (see :mod:`synclearn.learn.batch` for their form)."""
        batch = build_batch(self.model.tokenizer, examples, max_seq_len=self.max_seq_len,
                            pad_id=self.pad_id, device=self.model.device, anchors=self.anchors)
        return self.step_batch(batch, list(examples))

    def step_batch(self, batch: Any, examples: Any = None, *, record: bool = True) -> StepResult:
        """Learn from a prepared batch (a :class:`~synclearn.learn.batch.Batch`, or a
        :class:`~synclearn.learn.batch.LabelBatch` for classifiers). ``examples`` is what the
        journal records to re-run the step (JSON-able examples; required when journaling);
        ``record=False`` keeps the step out of the journal (approximate unlearning)."""
        with self._lock:
            t0 = time.perf_counter()
            journal = self._journal if record else None
            if journal is not None:
                from synclearn.memory.journal import replayable_examples

                examples = replayable_examples(examples)
            index = self.committed_steps
            result, undo, grads = self._learn(batch, journal is not None)
            if undo is not None and journal is not None:
                from synclearn.memory.journal import StepRecord

                journal.record(StepRecord(index, examples, undo))
            result.tokens, result.ids, result.seconds = batch.tokens, list(batch.ids), time.perf_counter() - t0
            if not result.skipped:
                for observe in list(self._observers):
                    observe(result, grads)
            return result

    def _skip(self, loss: Tensor | None, reason: str, grad_norm: float | None = None) -> tuple[StepResult, None, dict]:
        value = None if loss is None else float(loss.detach())
        logger.warning("learning step skipped: %s", reason)
        return StepResult(value, self.guard.version, skipped=True, reason=reason, grad_norm=grad_norm), None, {}

    def _clip(self, grads: list[Tensor]) -> tuple[list[Tensor], float]:
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(at_least_float32(g)) for g in grads])))
        if self.clip_norm and norm > self.clip_norm:
            scale = self.clip_norm / (norm + 1e-6)
            grads = [g * scale for g in grads]
        return grads, norm

    def _learn(self, batch: Any, journaling: bool) -> tuple[StepResult, dict | None, dict[int, Tensor]]:
        """Forward, differentiate, clip, guard, commit: the same for every update rule."""
        forward = self._rule.forward(batch, self.committed_steps)
        if isinstance(forward, str):
            return self._skip(None, forward)
        loss = forward.loss
        for regularizer in self._regularizers:
            loss = loss + regularizer()
        if not torch.isfinite(loss):
            return self._skip(loss, "non-finite loss")
        grads = torch.autograd.grad(loss, forward.leaves, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(forward.leaves, grads)]
        if not all(torch.isfinite(g).all() for g in grads):
            return self._skip(loss, "non-finite gradient")
        grads, norm = self._clip(grads)
        plan = self._rule.plan(forward, grads)
        if isinstance(plan, str):
            return self._skip(loss, plan, norm)
        undo = self._rule.snapshot(plan) if journaling else None
        with self.guard.write() as version:
            self._rule.commit(plan)
            self._sync_device()
        self.committed_steps += 1
        result = StepResult(float(loss.detach()), version, plan.touched, plan.neurons, grad_norm=norm,
                            scratch_bytes=plan.scratch_bytes, example_losses=forward.per_example.tolist(),
                            example_reproduced=[] if forward.reproduced is None else forward.reproduced.tolist())
        return result, undo, plan.grads

    def undo(self, undo: dict) -> None:
        """Put back what one journaled step overwrote (weights and optimizer rows), under the
        write lock. Steps must be undone newest first."""
        with self._lock, self.guard.write():
            self._rule.undo(undo)
            self._sync_device()

    def _sync_device(self) -> None:
        """On CUDA, the writes must have landed before the write lock is released."""
        if self.model.device.type == "cuda":
            torch.cuda.current_stream().synchronize()

    # -- state -------------------------------------------------------------------------------------
    def training_state_bytes(self) -> int:
        """Bytes held between steps for learning: optimizer state, plus the adapter weights
        for LoRA (they exist only to learn)."""
        return self._rule.training_state_bytes()

    def state_dict(self) -> dict:
        with self._lock:
            return {"committed_steps": self.committed_steps, "optimizer": self._rule.state_dict(),
                    "locked": {k: v.clone() for k, v in self._controls.protected.items()}, "update": self.update,
                    "lr_scale": {k: v.clone() for k, v in self._controls.lr_scale.items()},
                    "forget_epoch": self.forget_epoch,
                    "anchors": None if self.anchors is None else self.anchors.state_dict(),
                    "memory": self.memory.state_dict() if hasattr(self.memory, "state_dict") else None}

    def load_state_dict(self, state: dict) -> None:
        if state["update"] != self.update:
            raise ValueError(f"state is for update={state['update']!r}, this learner uses {self.update!r}")
        with self._lock:
            self._rule.load_state_dict(state["optimizer"])
            self.committed_steps = int(state["committed_steps"])
            self._controls.protected = {int(k): v.clone() for k, v in state["locked"].items()}
            self._controls.lr_scale = {int(k): v.clone() for k, v in state.get("lr_scale", {}).items()}
            self.forget_epoch = state.get("forget_epoch")
            if state.get("anchors") is not None:  # the predictions recorded on the base, not on these weights
                from synclearn.learn.anchors import AnchorSet

                self.anchors = AnchorSet.from_state_dict(state["anchors"])
            self.memory_state = state.get("memory")  # for a memory manager bound later (bind loads it)
        if self.memory_state is not None and getattr(self.memory, "learner", None) is self:
            self.memory.load_state_dict(self.memory_state)

