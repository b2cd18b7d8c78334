"""SyncTrainer: learn in the background while a ChatSession keeps serving, on one device.

    handle = learner.attach(session)     # starts learning from the session's log
    handle.status()                      # steps, last loss, version, errors, time spent
    handle.detach()                      # stops cleanly (the step in flight finishes first)

There is one copy of the weights. Serving only reads, under the read lock, one decode step
at a time; the learner writes only at commit, under the write lock (:mod:`.guard`). So no
token is computed from a half-written update, and attach/detach never pause serving.

Sharing the device:

* CPU: the learner thread runs with ``learn_threads`` intra-op threads (OpenMP thread
  counts are per thread, so serving keeps its own), and a governor keeps serving first:
  a step starts only while no request is in flight, and a step already running pauses at
  the next layer boundary when a request arrives (``yield_to_serving``), resuming when the
  session is idle again. When requests never stop, it learns anyway once it has waited
  ``max_defer_s`` seconds at a time, so learning cannot starve. While attached, the
  interpreter's thread switch interval is lowered (``switch_interval_s``) so a decode step
  never waits long for the GIL behind the learner's Python code.
* CUDA: the learner runs on its own low-priority stream; the session serves on a
  high-priority one (see :class:`~synclearn.chat.ChatSession`).

The learner's math does not depend on serving: the batches come from the log through a
seeded :class:`~synclearn.memory.ReplayBatchBuilder`, and a step's result depends only on its
batch and the learner's seed. An exception or a skipped (non-finite) step never reaches the
session: it is reported in ``status()`` and learning continues (``on_error="continue"``) or
stops (``"stop"``).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from typing import Any

import torch

from synclearn.memory.replay import ReplayBatchBuilder, uniform
from synclearn.model.neurons import neuron_context
from synclearn.options import AttachOptions

logger = logging.getLogger(__name__)

_DEFAULT = AttachOptions()  # the defaults are defined once, in synclearn.options


class LearnerHandle:
    """A learner attached to a serving session. Made by :meth:`Learner.attach`.

    The settings and their defaults are :class:`~synclearn.options.AttachOptions`'s fields
    (``policy``, ``consolidation`` and ``log`` are run-time objects).

    Args:
        learner: the Learner.
        session: the ChatSession being served, or anything with its load-signal interface
            (``log``, ``busy``, ``wait_idle``, ``add_listener``, ``remove_listener``).
        log: the log to learn from (default: the session's, else the learner's).
        batch_size, replay_ratio, policy, seed, new_repeats, learned_loss, min_gain, until_reproduced: the batch builder's
            settings (:class:`~synclearn.memory.ReplayBatchBuilder`; ``new_repeats`` > 1 trains
            each new turn in that many steps, each with fresh replay).
        learn_threads: intra-op threads of the learner thread on CPU.
        idle_only: start steps only while the session has no request in flight.
        max_defer_s: longest a step waits for idleness.
        idle_replay: keep learning from replay alone when there is nothing new.
        poll_s: how often to look for new rows when not woken by a new turn.
        on_error: "continue" or "stop" after an exception in a step.
        max_steps: stop after this many committed steps (None: until detached).
        consolidation: a :class:`~synclearn.memory.Consolidation`; it observes every learned
            batch (importance from traffic) and is applied every ``consolidate_every`` steps.
        yield_to_serving: pause a running step at layer boundaries while requests are in flight.
        switch_interval_s: ``sys.setswitchinterval`` while attached (None: leave it alone).
        clock: ``clock() -> float`` seconds, the "now" of replay draws and of the log's learned /
            rehearsed times (None: the wall clock). A benchmark that controls it (e.g. counts
            its interactions) makes the replay schedule, and so its figures, repeat run to run.
    """

    def __init__(self, learner: Any, session: Any, *, log: Any = None, policy: Any = uniform, consolidation: Any = None,
                 clock: Any = None,
                 batch_size: int = _DEFAULT.batch_size, replay_ratio: float = _DEFAULT.replay_ratio,
                 seed: int | None = _DEFAULT.seed, new_repeats: int = _DEFAULT.new_repeats,
                 learned_loss: float | None = _DEFAULT.learned_loss, min_gain: float | None = _DEFAULT.min_gain,
                 until_reproduced: bool = _DEFAULT.until_reproduced, learn_threads: int = _DEFAULT.learn_threads,
                 idle_only: bool = _DEFAULT.idle_only,
                 max_defer_s: float = _DEFAULT.max_defer_s, idle_replay: bool = _DEFAULT.idle_replay,
                 poll_s: float = _DEFAULT.poll_s, on_error: str = _DEFAULT.on_error,
                 max_steps: int | None = _DEFAULT.max_steps, consolidate_every: int = _DEFAULT.consolidate_every,
                 yield_to_serving: bool = _DEFAULT.yield_to_serving,
                 switch_interval_s: float | None = _DEFAULT.switch_interval_s) -> None:
        for candidate in (log, session.log, learner.log):
            if candidate is not None:
                log = candidate
                break
        else:
            raise ValueError("attach needs an InteractionLog: give the session or the learner a log, or pass log=")
        if on_error not in ("continue", "stop"):
            raise ValueError(f"on_error={on_error!r} (expected 'continue' or 'stop')")
        if learn_threads < 1 or max_defer_s < 0 or poll_s <= 0:
            raise ValueError(f"learn_threads={learn_threads!r} must be >= 1, max_defer_s={max_defer_s!r} >= 0, "
                             f"poll_s={poll_s!r} > 0")
        self.learner, self.session, self.log = learner, session, log
        self.builder = ReplayBatchBuilder(log, policy, replay_ratio=replay_ratio, batch_size=batch_size,
                                          seed=learner.seed if seed is None else seed, new_repeats=new_repeats,
                                          learned_loss=learned_loss, min_gain=min_gain,
                                          until_reproduced=until_reproduced)
        self.learn_threads, self.idle_only, self.max_defer_s = learn_threads, idle_only, max_defer_s
        self.idle_replay, self.poll_s, self.on_error, self.max_steps = idle_replay, poll_s, on_error, max_steps
        self.consolidation, self.consolidate_every = consolidation, max(1, consolidate_every)
        self.yield_to_serving, self.switch_interval_s = yield_to_serving, switch_interval_s
        self.clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._status: dict[str, Any] = {"attached": True, "steps": 0, "skipped": 0, "examples": 0, "last_loss": None,
                                        "version": learner.guard.version, "errors": [], "learning_s": 0.0,
                                        "waiting_s": 0.0, "paused_s": 0.0, "deferred": 0, "stopped_reason": None}
        self._listener = lambda rid: self._wake.set()
        session.add_listener(self._listener)
        self._thread = threading.Thread(target=self._run, name="synclearn-learner", daemon=True)
        self._threads_set = threading.Event()
        serving_threads = torch.get_num_threads()
        self._thread.start()
        if self._threads_set.wait(10.0) and self.learner.model.device.type != "cuda":
            # torch.set_num_threads in the learner thread also set the count every thread started
            # later begins with; put that back (the learner thread keeps its own)
            torch.set_num_threads(serving_threads)

    # -- control --------------------------------------------------------------------------------
    def detach(self, timeout: float | None = 60.0) -> dict[str, Any]:
        """Stop learning; waits for the step in flight to finish. Returns the final status."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the learner did not stop within {timeout}s")
        self.session.remove_listener(self._listener)
        return self.status()

    @property
    def attached(self) -> bool:
        return self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        """A snapshot: steps, skipped, examples, last_loss, version, errors, learning_s,
        waiting_s, paused_s (time a running step yielded to serving), deferred (steps delayed
        by serving), attached, stopped_reason."""
        with self._progress:
            out = dict(self._status)
            out["errors"] = list(out["errors"])
        out["attached"] = self._thread.is_alive()
        return out

    def wait_for_steps(self, n: int, timeout: float) -> bool:
        """Block until at least ``n`` steps were committed (True) or ``timeout`` (False)."""
        with self._progress:
            return self._progress.wait_for(lambda: self._status["steps"] >= n or not self._thread.is_alive(), timeout) \
                and self._status["steps"] >= n

    # -- the loop -------------------------------------------------------------------------------
    def _update(self, **changes: Any) -> None:
        with self._progress:
            for key, value in changes.items():
                if key in ("steps", "skipped", "examples", "deferred"):
                    self._status[key] += value
                elif key in ("learning_s", "waiting_s", "paused_s"):
                    self._status[key] += value
                elif key == "error":
                    self._status["errors"] = (self._status["errors"] + [value])[-20:]
                else:
                    self._status[key] = value
            self._progress.notify_all()

    def _pause(self) -> None:
        """Called before each MLP layer of the learner's passes: serving goes first."""
        if self.session.busy and not self._stop.is_set():
            t0 = time.perf_counter()
            self.session.wait_idle(self.max_defer_s)
            self._update(paused_s=time.perf_counter() - t0)

    def _run(self) -> None:
        device = self.learner.model.device
        old_interval = sys.getswitchinterval()
        if self.switch_interval_s is not None:
            sys.setswitchinterval(self.switch_interval_s)
        pause = self._pause if self.yield_to_serving and self.idle_only else None
        try:
            with neuron_context(pause=pause):
                if device.type == "cuda":
                    # priority 0 is CUDA's lowest; the session serves on the highest
                    self._threads_set.set()
                    with torch.cuda.stream(torch.cuda.Stream(device=device, priority=0)):
                        self._loop()
                else:
                    torch.get_num_threads()  # this thread's thread pool is set up now, from the global count
                    torch.set_num_threads(self.learn_threads)  # this thread's, and (restored by attach) the global
                    self._threads_set.set()
                    self._loop()
        finally:
            self._threads_set.set()
            if self.switch_interval_s is not None:
                sys.setswitchinterval(old_interval)

    def _loop(self) -> None:
        reason = "detached"
        while not self._stop.is_set():
            if self.max_steps is not None and self._status["steps"] >= self.max_steps:
                reason = "max_steps"
                break
            try:
                outcome = self._iteration()
            except Exception as err:  # reported (and logged), never raised into serving
                logger.error("learning step failed: %s: %s", type(err).__name__, err, exc_info=True)
                self._update(error=f"{type(err).__name__}: {err}")
                self.last_error_trace = traceback.format_exc()
                if self.on_error == "stop":
                    reason = "error"
                    break
                self._stop.wait(self.poll_s)  # back off before trying again
                continue
            if outcome == "skipped" and self.on_error == "stop":
                reason = "skipped"
                break
        self._update(stopped_reason=reason)

    def _iteration(self) -> str:
        """One governor wait + batch + step. Returns "idle", "skipped" or "learned"."""
        t0 = time.perf_counter()
        if self.idle_only and self.session.busy:
            self._update(deferred=1)
            self.session.wait_idle(self.max_defer_s)
        if self._stop.is_set():
            return "idle"
        # the batch is built, learned and committed with no forget in between: a forget
        # cannot delete rows that a batch built before it would still train on
        with self.learner.exclusive():
            return self._learn_batch(t0)

    def _learn_batch(self, t0: float) -> str:
        now = self.clock() if self.clock is not None else None
        batch = self.builder.next_batch(now)
        has_new = self.builder.has_new
        if not batch or not (has_new or self.idle_replay):
            self._update(waiting_s=time.perf_counter() - t0)
            self._wake.wait(self.poll_s)
            self._wake.clear()
            return "idle"
        self._update(waiting_s=time.perf_counter() - t0)
        t1 = time.perf_counter()
        learnable = [ex for ex in batch if ex["response"]]  # an empty reply teaches nothing
        if not learnable:  # nothing was learned: no row is marked learned
            self.builder.reject(batch, "no learnable reply in the batch")
            return "idle"
        anchors = self.learner.anchors
        extra = []
        if anchors is not None and anchors.per_step:  # the base's predictions, most of all on inputs like these
            extra = anchors.draw_for(self.builder.step, learnable, self.learner.model.tokenizer)
        try:
            result = self.learner.step(learnable + extra)
        except Exception as err:
            # not learned; after a few failures the builder sets the rows aside (never retried forever)
            self.builder.reject(batch, f"{type(err).__name__}: {err}")
            self._update(learning_s=time.perf_counter() - t1)
            raise
        if result.skipped:
            self.builder.reject(batch, result.reason)
            self._update(skipped=1, error=f"step skipped: {result.reason}", learning_s=time.perf_counter() - t1)
            return "skipped"
        losses = reproduced = None
        if len(learnable) == len(batch) and len(result.example_losses) == len(batch) + len(extra):
            losses = result.example_losses[: len(batch)]  # the anchors come last
            reproduced = result.example_reproduced[: len(batch)] or None
        self.builder.commit(batch, losses, now=now, reproduced=reproduced)
        if self.consolidation is not None:
            self.consolidation.observe(learnable)
            if (self._status["steps"] + 1) % self.consolidate_every == 0:
                self.consolidation.consolidate()
        self._update(steps=1, examples=len(learnable), last_loss=result.loss, version=result.version,
                     learning_s=time.perf_counter() - t1)
        return "learned"
