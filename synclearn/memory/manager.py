"""The memory manager: one object for everything about what a learning model remembers.

    memory = MemoryManager()                      # the conf/memory group's arguments
    learner = Learner(model, log, memory=memory)  # binds: background, protection, observers
    handle = learner.attach(session, **memory.attach_options())
    memory.status()                               # free vs protected neurons, background, ...

The learner, the chat front end and the server talk to it (never to the pieces directly):

* **background statistics** (:mod:`synclearn.memory.background`): per neuron of every plastic
  layer, how often and how strongly it fires on ordinary input; loaded from beside the base
  model (computed there on first use), handed to the selector (``Learner.set_background``)
  and updated from served traffic: every row the learner trains on for the first time, in the
  learner's thread after its step, never on the serving path;
* **which neurons a step may change**: the learner's selector (``specificity`` ranks neurons by
  batch activation against the background) minus the protected set;
* **protection** (:mod:`synclearn.memory.protection`): the neurons a learned item's own steps
  changed, within ``protection.budget`` of each layer, fading with ``half_life_steps`` unless the
  item is replayed;
* **rehearsal and replay**: the batch settings of the attached learner (``attach_options``);
* **fading** (:class:`~synclearn.memory.decay.Fading`) and **forgetting** (``learner.forget``,
  exact or approximate), after which the forgotten rows' protection records are dropped too;
* **anchors** (:mod:`synclearn.learn.anchors`): the model's own predictions on pretraining-style
  turns, recorded when the manager binds (on the base); every attached step adds ``anchors.per_step``
  of them (most of all those like the batch's prompts) and a KL term toward the recorded
  predictions, so what a step changes for the taught input it changes less for everything else
  (they are learner state: a checkpoint keeps the ones recorded on the base);
* dense learners (LoRA/full) have no neurons: ``consolidation`` (EWC) anchors them instead.

It also keeps the interface of :class:`~synclearn.bench.experiment.MemorySetup`
(``bind(learner, policy)``, ``attach_options()``, ``builder()``, ``journal``), so a benchmark
takes either.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from synclearn.memory.background import BackgroundStats, background_for
from synclearn.memory.protection import NeuronProtection

BACKGROUND_SOURCES = ("base", "none")


class MemoryManager:
    """What is remembered and how (the ``memory`` config group).

    Args:
        replay_ratio: share of each learning batch drawn from replay (0 = no replay).
        batch_size: examples per learning step.
        new_repeats, learned_loss, min_gain: rehearsal: a new turn is trained in up to
            ``new_repeats`` steps, until its loss is below ``learned_loss`` or two steps in a row
            left it above ``1 - min_gain`` times its best (:class:`~synclearn.memory.ReplayBatchBuilder`);
            ``until_reproduced``: early once the model reproduces it, instead of by ``learned_loss``.
        protection: :class:`~synclearn.memory.protection.NeuronProtection` settings (budget,
            half_life_steps, floor, per_item, max_items) for sparse learners, or None (none).
        background: "base" (statistics saved beside the base model, computed on first use) or
            "none" (the specificity selector then falls back to top-k).
        background_tokens: tokens of pretraining-style data the statistics are computed on.
        background_horizon: tokens of traffic the statistics average over.
        observe_traffic: update the statistics from rows the learner takes in.
        anchors: :class:`~synclearn.learn.anchors.AnchorSet` settings (``turns``: how many
            pretraining-style turns, ``per_step``, ``weight``, ``near_share``, ``top_k``), or None
            (none). Language models only; a classifier learner gets none.
        consolidation: a callable ``learner -> Consolidation`` (EWC for LoRA/full; for sparse
            learners only used when ``protection`` is None), or None.
        consolidate_every: apply ``consolidation`` every this many steps.
        fading: a :class:`~synclearn.memory.decay.Fading`, or None.
        journal: keep a step journal (exact forgetting).
    """

    def __init__(self, *, replay_ratio: float = 0.75, batch_size: int = 8, new_repeats: int = 12,
                 learned_loss: float | None = 0.02, min_gain: float | None = 0.1, until_reproduced: bool = False,
                 protection: dict[str, Any] | None = None, anchors: dict[str, Any] | None = None,
                 background: str = "base",
                 background_tokens: int = 65_536, background_horizon: float = 262_144, observe_traffic: bool = True,
                 consolidation: Callable[[Any], Any] | None = None, consolidate_every: int = 20, fading: Any = None,
                 journal: bool = False) -> None:
        bad = []
        if not 0 <= replay_ratio <= 1:
            bad.append(f"replay_ratio={replay_ratio!r} (expected 0 <= replay_ratio <= 1)")
        for name, value in (("batch_size", batch_size), ("new_repeats", new_repeats),
                            ("consolidate_every", consolidate_every), ("background_tokens", background_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad.append(f"{name}={value!r} (expected a positive integer)")
        if background not in BACKGROUND_SOURCES:
            bad.append(f"background={background!r} (expected one of {BACKGROUND_SOURCES})")
        if protection is not None:
            try:
                NeuronProtection({0: 8}, **dict(protection))
            except (TypeError, ValueError) as err:
                bad.append(f"protection={dict(protection)!r}: {err}")
        if anchors is not None:
            from synclearn.learn.anchors import anchor_settings_errors

            anchors = dict(anchors)
            bad += [f"anchors.{e}" for e in anchor_settings_errors(anchors)]
        if bad:
            raise ValueError("invalid MemoryManager settings: " + "; ".join(bad))
        self.replay_ratio, self.batch_size = float(replay_ratio), batch_size
        self.new_repeats, self.learned_loss, self.min_gain = new_repeats, learned_loss, min_gain
        self.until_reproduced = bool(until_reproduced)
        self.protection_settings = dict(protection) if protection is not None else None
        self.anchor_settings = anchors
        self.background_source, self.background_tokens = background, background_tokens
        self.background_horizon, self.observe_traffic = background_horizon, observe_traffic
        self.consolidation, self.consolidate_every = consolidation, consolidate_every
        self.fading, self.journal = fading, journal
        self.learner: Any = None
        self.policy: Any = None
        self.consolidator: Any = None
        self.protection: NeuronProtection | None = None
        self.stats: BackgroundStats | None = None
        self.traffic_rows = 0

    # -- binding ---------------------------------------------------------------------------------
    def bind(self, learner: Any, policy: Any = None) -> "MemoryManager":
        """Connect to ``learner`` (once; binding the same learner again only sets ``policy``, the
        replay policy, wrapped by ``fading`` when set)."""
        if policy is not None or self.policy is None:
            from synclearn.memory.replay import RetentionAware

            policy = policy if policy is not None else RetentionAware()
            self.policy = self.fading.pool(policy) if self.fading is not None else policy
        if self.learner is learner:
            return self
        if self.learner is not None:
            raise RuntimeError("this MemoryManager is bound to another learner")
        self.learner = learner
        if learner.memory is None:  # its checkpoints then carry this manager's state
            learner.memory = self
        sparse = learner.update == "sparse"
        layouts = learner.model.neuron_layouts()
        if sparse and self.protection_settings is not None:
            self.protection = NeuronProtection({layer: layouts[layer].d_ff for layer in learner.plastic_layers},
                                               **self.protection_settings)
        if self.consolidation is not None and not (sparse and self.protection is not None):
            self.consolidator = self.consolidation(learner)
        if sparse and self.background_source == "base":
            self.stats = background_for(learner.model, n_tokens=self.background_tokens,
                                        horizon=self.background_horizon)
            self._hand_background()
        if (self.anchor_settings is not None and learner.anchors is None  # restored ones were recorded on the base
                and hasattr(getattr(learner.model, "tokenizer", None), "turn")):
            from synclearn.learn.anchors import AnchorSet, anchor_turns

            opts = dict(self.anchor_settings)
            turns = anchor_turns(opts.pop("turns", 128), seed=learner.seed)
            learner.set_anchors(AnchorSet.build(learner.model, turns, seed=learner.seed,
                                                max_len=min(128, learner.max_seq_len + 1), **opts))
        learner.add_step_observer(self._observe_step)
        if learner.memory_state is not None:  # restored from a checkpoint before this manager was bound
            self.load_state_dict(learner.memory_state)
        return self

    def _hand_background(self) -> None:
        for layer in self.learner.plastic_layers:
            self.learner.set_background(layer, self.stats.mean[layer].float())

    def _observe_step(self, result: Any, grads: dict[int, torch.Tensor]) -> None:
        """After every committed step (learner's thread): protection, then served traffic."""
        if self.protection is not None:
            fresh = [i for i in result.ids if i is not None and i not in self.protection.items
                     and i not in self.protection.lessons]
            self.protection.observe(result.ids, result.neurons)
            for layer in self.learner.plastic_layers:
                self.learner.set_protected(layer, self.protection.protected(layer))
        else:
            fresh = []
        if self.stats is not None and self.observe_traffic and fresh and self.learner.log is not None:
            rows = [r for r in self.learner.log.get_many(fresh) if r is not None and r["response"]]
            self.stats.observe(self.learner.model, [{"prompt": r["prompt"], "response": r["response"]} for r in rows],
                               max_seq_len=self.learner.max_seq_len)
            self.traffic_rows += len(rows)
            self._hand_background()

    # -- what the attached learner and benchmarks take ------------------------------------------
    def attach_options(self) -> dict[str, Any]:
        """:class:`~synclearn.learn.sync.LearnerHandle` settings (rehearsal, replay, consolidation)."""
        if self.policy is None:
            raise RuntimeError("MemoryManager.bind(learner, policy) must run before attach_options()")
        return {"batch_size": self.batch_size, "replay_ratio": self.replay_ratio, "policy": self.policy,
                "consolidation": self.consolidator, "consolidate_every": self.consolidate_every,
                "new_repeats": self.new_repeats, "learned_loss": self.learned_loss, "min_gain": self.min_gain,
                "until_reproduced": self.until_reproduced}

    def builder(self, log: Any, seed: int = 0):
        """A :class:`~synclearn.memory.ReplayBatchBuilder` with these settings."""
        from synclearn.memory import ReplayBatchBuilder

        return ReplayBatchBuilder(log, self.policy, replay_ratio=self.replay_ratio, batch_size=self.batch_size,
                                  seed=seed, new_repeats=self.new_repeats, learned_loss=self.learned_loss,
                                  min_gain=self.min_gain, until_reproduced=self.until_reproduced)

    # -- fading and forgetting -------------------------------------------------------------------
    def fade(self, now: float | None = None) -> list[int]:
        """Faded rows (retention below the threshold; deleted from the log when the policy says
        so); their protection records are dropped. Empty without ``fading``."""
        if self.fading is None or self.learner is None or self.learner.log is None:
            return []
        ids = self.fading.sweep(self.learner.log, now)
        if self.protection is not None:
            self.protection.forget(ids)
        return ids

    def forget(self, ids: Any = None, *, session_id: str | None = None, match: str | None = None,
               mode: str = "exact", **options: Any):
        """``learner.forget`` (exact or approximate); the forgotten rows' protection records go too."""
        if self.learner is None:
            raise RuntimeError("MemoryManager.forget needs a bound learner")
        report = self.learner.forget(ids, session_id=session_id, match=match, mode=mode, **options)
        if self.protection is not None:
            self.protection.forget(getattr(report, "ids", None) or (ids or []))
        return report

    # -- status and state --------------------------------------------------------------------------
    def free_share(self) -> dict[int, float]:
        """Per plastic layer, the share of neurons a step may change (not protected):
        :meth:`~synclearn.learn.controls.LearnerControls.free_share`."""
        return self.learner.free_share()

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot for dashboards: per layer free/protected neurons, background
        source and token count, items tracked, settings."""
        out: dict[str, Any] = {"bound": self.learner is not None, "replay_ratio": self.replay_ratio,
                               "batch_size": self.batch_size, "new_repeats": self.new_repeats,
                               "protection": self.protection_settings, "layers": {}}
        if self.learner is None:
            return out
        out["update"] = self.learner.update
        out["selector"] = getattr(self.learner.selector, "__name__", self.learner.selector)
        for layer in self.learner.plastic_layers:
            mask = self.learner.protected(layer)
            d_ff = self.learner.model.neuron_layouts()[layer].d_ff
            n = 0 if mask is None else int(mask.sum())
            out["layers"][str(layer)] = {"neurons": d_ff, "protected": n, "free": d_ff - n, "free_share": (d_ff - n) / d_ff}
        out["background"] = None if self.stats is None else {
            "source": self.stats.source, "tokens": self.stats.tokens, "traffic_rows": self.traffic_rows}
        anchors = self.learner.anchors
        out["anchors"] = None if anchors is None else {"held": len(anchors), "per_step": anchors.per_step,
                                                       "weight": anchors.weight}
        if self.protection is not None:
            out["items_protected"] = len(self.protection.items)
            out["lessons_open"] = len(self.protection.lessons)
            out["steps_observed"] = self.protection.steps
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"protection": None if self.protection is None else self.protection.state_dict(),
                "background": None if self.stats is None else self.stats.state_dict(),
                "traffic_rows": self.traffic_rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.learner is None:
            raise RuntimeError("bind the MemoryManager to its learner before loading its state")
        if state.get("protection") is not None and self.protection is not None:
            self.protection.load_state_dict(state["protection"])
            for layer in self.learner.plastic_layers:
                self.learner.set_protected(layer, self.protection.protected(layer))
        if state.get("background") is not None and self.stats is not None:
            self.stats.load_state_dict(state["background"])
            self._hand_background()
        self.traffic_rows = int(state.get("traffic_rows", 0))
