"""Runtime: one served model with its log, its learner and its checkpoints.

The terminal chat and the server are thin layers over this object::

    rt = Runtime.open("mcsd-tiny", "data/")     # data/log.db + data/checkpoint/ (restored if present)
    chat = rt.new_session()                     # a ChatSession logging into rt.log
    rt.attach(batch_size=4)                     # learn in the background while chats are served
    rt.feedback(chat.session_id, score=1.0)     # on the session's last answer
    rt.forget(chat.session_id, match="Ada")     # only this session's rows
    rt.status(); rt.save(); rt.close()          # close: detach, checkpoint, close the log

Scoping: every call that touches logged rows takes the caller's ``session_id`` and only ever
selects rows of that session (ids of other sessions are reported as not found).

Many sessions, one learner: :class:`~synclearn.learn.sync.LearnerHandle` attaches to anything
with a ChatSession's load-signal interface (``log``, ``busy``, ``wait_idle``, ``add_listener``,
``remove_listener``). :class:`ServingLoad` offers it summed over every session the runtime
made, so the learner's governor yields to all of them.

Restart: :meth:`Runtime.open` restores the last checkpoint (model, learner state, weight
version). Rows the log marks as learned after that checkpoint's snapshot were learned by
steps the checkpoint does not hold; they are marked unlearned again so the learner takes
them as new.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable

from synclearn.chat.checkpoint import CheckpointStore
from synclearn.chat.session import ChatSession
from synclearn.learn import Learner, guard_for
from synclearn.memory import InteractionLog
from synclearn.memory.replay import uniform
from synclearn.options import AttachOptions, LearnerOptions

logger = logging.getLogger(__name__)

FORGET_MODES = ("exact", "approximate", "auto")


def canonical_model_name(model: str | os.PathLike) -> str:
    """One spelling per model: a pretrained name as is (``"mcsd-chat"``), a random initialization
    as ``"<size>-random"`` (the bare size is its alias), a directory as its absolute resolved path."""
    from synclearn.learn.pretrain import PRETRAINED_NAMES
    from synclearn.model.checkpoint import RANDOM_SUFFIX
    from synclearn.model.config import NAMED_CONFIGS

    key = str(model)
    if key in PRETRAINED_NAMES:
        return key
    if key.removesuffix(RANDOM_SUFFIX) in NAMED_CONFIGS:
        return key.removesuffix(RANDOM_SUFFIX) + RANDOM_SUFFIX
    return str(Path(key).expanduser().resolve())


class NotFound(LookupError):
    """The caller's session has no such row."""


class Conflict(RuntimeError):
    """The request does not fit the current state (e.g. attach while attached)."""


class ServingLoad:
    """What a LearnerHandle needs from the session it is attached to, over many sessions.

    Attributes:
        log: the log the learner reads. busy: requests in flight over all sessions.
    """

    def __init__(self, log: Any) -> None:
        self.log = log
        self._listeners: list = []
        self._busy = 0
        self._idle = threading.Condition()

    @property
    def busy(self) -> int:
        return self._busy

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def enter(self) -> None:
        with self._idle:
            self._busy += 1

    def leave(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def add_listener(self, fn: Any) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Any) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def notify(self, rid: int) -> None:
        """Called by each watched ChatSession with every new row id."""
        for listener in list(self._listeners):
            listener(rid)

    def watch(self, chat: ChatSession) -> None:
        chat.add_listener(self.notify)


class Runtime:
    """A model served to many sessions, with its log, learner and checkpoints.

    Args:
        model: the served model. log: its InteractionLog. learner: a Learner on ``model``.
        base: what ``load_model`` was given (recorded in checkpoints).
        seed: the seed of a named size.
        checkpoints: where to checkpoint (None: never).
        checkpoint_every_s: autosave period when weights changed (None or 0: only on save/close).
    """

    def __init__(self, model: Any, log: InteractionLog, learner: Learner, *, base: str = "mcsd-tiny", seed: int = 0,
                 checkpoints: CheckpointStore | None = None, checkpoint_every_s: float | None = None) -> None:
        self.model, self.log, self.learner = model, log, learner
        self.base, self.seed, self.checkpoints = str(base), seed, checkpoints
        self.guard = guard_for(model)
        self.load = ServingLoad(log)
        self.handle: Any = None
        self.attach_defaults = AttachOptions()  # Runtime.attach's options replace these
        self.attach_objects: dict[str, Any] = {}  # the replay policy and consolidation handed to the learner
        self.sampling: dict[str, Any] = {}  # the sessions' sampling defaults
        self.resumed_from: dict | None = None  # the manifest of the checkpoint open() restored
        self.data_dir: Path | None = None  # where open() keeps the log and checkpoints
        self.attach_options: dict[str, Any] = {}
        self.last_checkpoint: dict | None = checkpoints.manifest() if checkpoints else None
        self._control = threading.RLock()  # attach / detach / forget / save / close, one at a time
        self._closed = False
        self._stop = threading.Event()
        self._autosave: threading.Thread | None = None
        if checkpoints is not None:
            learner.set_persist(self._persist)  # a forget checkpoints at its commit point
        if checkpoints is not None and checkpoint_every_s:
            self._autosave = threading.Thread(target=self._autosave_loop, args=(float(checkpoint_every_s),),
                                              name="synclearn-checkpoint", daemon=True)
            self._autosave.start()

    @classmethod
    def open(cls, model: str | os.PathLike = "mcsd-tiny-random", data_dir: str | os.PathLike = "synclearn-data", *,
             seed: int = 0, device: str | None = None, learner: dict | LearnerOptions | None = None,
             checkpoint_every_s: float | None = 60.0, keep: int = 2, log_synchronous: str = "NORMAL",
             build_model: Callable[[], Any] | None = None, memory: Any = None, policy: Any = None,
             attach: AttachOptions | None = None, sampling: dict | None = None) -> "Runtime":
        """Open ``data_dir`` (``log.db``, ``checkpoint/``, ``journal/``), restoring the last checkpoint.

        Args:
            model: a model name or a model directory (see ``load_model``); with ``build_model``,
                the name recorded in checkpoints. Spellings of one model (``mcsd-tiny`` and
                ``mcsd-tiny-random``, ``./dir`` and ``/abs/dir``) are the same model.
            data_dir: where the log and checkpoints live (created if missing).
            seed: initialization seed of a random initialization; the learner's seed by default.
            device: where to put the model.
            learner: Learner settings (:class:`~synclearn.options.LearnerOptions` or its fields).
            checkpoint_every_s: autosave period (None or 0: only on save/close).
            keep: checkpoint folders to keep.
            log_synchronous: the log's fsync policy (``"NORMAL"`` survives a killed process).
            build_model: makes the model when there is no checkpoint to restore (default:
                ``load_model(model, seed=seed, device=device)``).
            memory: a memory setup (``memory.bind(learner, policy)``, then
                ``memory.attach_options()`` gives the replay policy, the consolidation and the
                rehearsal fields of the attach options), e.g. the ``memory`` config group.
            policy: the replay policy handed to ``memory`` (default: uniform).
            attach: the attach defaults (the memory setup's fields replace theirs).
            sampling: the sessions' sampling defaults (``max_new_tokens``, ``temperature``, ...).

        Raises:
            ValueError: the checkpoint in ``data_dir`` was made from another model, or bad settings.
        """
        from synclearn.model import load_model

        base = canonical_model_name(model)
        data = Path(data_dir)
        data.mkdir(parents=True, exist_ok=True)
        settings = learner.kwargs() if isinstance(learner, LearnerOptions) else {"seed": seed, **(learner or {})}
        options = {**settings, "journal": data / "journal"}
        store = CheckpointStore(data / "checkpoint", keep=keep)
        manifest = store.manifest()
        if manifest is not None and canonical_model_name(manifest["base"]) != base:
            raise ValueError(f"the checkpoint in {store.root} continues {manifest['base']!r}, not {base!r}; "
                             f"pass model={manifest['base']!r} or use another data directory")
        log = InteractionLog(data / "log.db", synchronous=log_synchronous)
        try:
            if manifest is None:
                net = build_model() if build_model is not None else load_model(model, seed=seed, device=device)
                learn = Learner(net, log, **options)
            else:
                net, learn, manifest = store.restore(lambda m: Learner(m, log, **options), device=device)
                seq = (manifest.get("log") or {}).get("seq")  # rows learned after the snapshot: new again
                log.unlearn_after(seq) if seq is not None else log.unlearn_since(manifest["saved_at"])
                logger.info("restored checkpoint #%s of %s (weight version %s) from %s", manifest["seq"], base,
                            manifest["weight_version"], store.root)
            rt = cls(net, log, learn, base=base, seed=seed, checkpoints=store, checkpoint_every_s=checkpoint_every_s)
        except BaseException:
            log.close()
            raise
        rt.data_dir = data.resolve()
        rt.resumed_from = dict(manifest) if manifest is not None else None
        rt.sampling = dict(sampling or {})
        defaults = attach or AttachOptions()
        if memory is not None:
            memory.bind(learn, policy if policy is not None else uniform)
            chosen = dict(memory.attach_options())  # AttachOptions fields, and run-time objects (policy, ...)
            fields = set(AttachOptions.field_names())
            rt.attach_objects = {k: v for k, v in chosen.items() if k not in fields}
            defaults = defaults.replace(**{k: v for k, v in chosen.items() if k in fields})
        elif policy is not None:
            rt.attach_objects = {"policy": policy}
        rt.attach_defaults = defaults
        return rt

    # -- sessions -----------------------------------------------------------------------------------
    def new_session(self, session_id: str | None = None, *, system: str | None = None, **sampling: Any) -> ChatSession:
        """A ChatSession on the model, logging into the runtime's log, watched by the learner."""
        chat = ChatSession(self.model, self.log, session_id=session_id, system=system,
                           **{**self.sampling, **sampling})
        self.load.watch(chat)
        return chat

    @property
    def version(self) -> int:
        """The current weight version."""
        return self.guard.version

    # -- the learner ----------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self.handle is not None and self.handle.attached

    def attach(self, **options: Any) -> dict:
        """Start learning in the background; returns the status. ``options`` are
        :class:`~synclearn.options.AttachOptions` fields replacing :attr:`attach_defaults`.

        Raises:
            Conflict: already attached. ValueError: a bad or unknown option.
        """
        chosen = self.attach_defaults.replace(**options)
        with self._control:
            self._check_open()
            if self.attached:
                raise Conflict("the learner is already attached; detach it first")
            self.handle = self.learner.attach(self.load, **self.attach_objects, **chosen.kwargs())
            self.attach_options = dict(options)  # what was asked; the rest are attach_defaults
            logger.info("learner attached (%s): %s", self.learner.update, chosen)
        return self.status()

    def detach(self) -> dict:
        """Stop learning (the step in flight finishes first); returns the status. Idempotent."""
        with self._control:
            if self.handle is not None:
                self.handle.detach()
        return self.status()

    def status(self) -> dict:
        """Weight version, learner state and steps, log size, last checkpoint."""
        handle = self.handle
        out = {"weight_version": self.version, "attached": self.attached, "update": self.learner.update,
               "committed_steps": self.learner.committed_steps, "log_rows": self.log.count(),
               "learner": handle.status() if handle is not None else None,
               "attach_options": dict(self.attach_options) if handle is not None else None,
               "checkpoint": None}
        if self.last_checkpoint is not None:
            keys = ("seq", "weight_version", "committed_steps", "saved_at")
            out["checkpoint"] = {k: self.last_checkpoint[k] for k in keys}
        return out

    # -- feedback and forgetting ----------------------------------------------------------------------
    def _own_rows(self, session_id: str) -> list[dict]:
        if not isinstance(session_id, str) or not session_id:
            raise ValueError(f"session_id must be a non-empty string, got {session_id!r}")
        return self.log.by_session(session_id)

    def feedback(self, session_id: str, interaction_id: int | None = None, *, score: float | None = None,
                 correction: str | None = None) -> dict:
        """Feedback on one of the session's answers (default: its last); returns the row's feedback.

        Raises:
            NotFound: the session has no such row (or no row at all). ValueError: bad values.
        """
        if score is None and correction is None:
            raise ValueError("feedback needs a score, a correction, or both")
        rows = self._own_rows(session_id)
        if interaction_id is None:
            if not rows:
                raise NotFound(f"session {session_id!r} has no answer to give feedback on")
            interaction_id = rows[-1]["id"]
        elif interaction_id not in {r["id"] for r in rows}:
            raise NotFound(f"session {session_id!r} has no interaction {interaction_id}")
        self.log.set_feedback(interaction_id, score=score, correction=correction)
        row = self.log.get(interaction_id)
        if row is None:  # forgotten in between
            raise NotFound(f"session {session_id!r} has no interaction {interaction_id}")
        return {"interaction_id": interaction_id, "score": row["feedback_score"],
                "correction": row["feedback_correction"]}

    def select_own(self, session_id: str, *, ids: list[int] | None = None, match: str | None = None,
                   everything: bool = False) -> list[int]:
        """The ids of the session's own rows that a forget request names.

        Exactly one selector: ``everything`` (the whole session), ``match`` (rows whose prompt,
        response or correction contain the text, case-insensitively, or that the log's
        full-text search finds), or ``ids`` (all must belong to the session).
        """
        given = [n for n, v in (("ids", ids), ("match", match), ("session", everything or None)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"forget needs exactly one of ids, match, session; got {given or 'none'}")
        rows = self._own_rows(session_id)
        own = {r["id"] for r in rows}
        if everything:
            return sorted(own)
        if match is not None:
            if not isinstance(match, str) or not match.strip():
                raise ValueError("match must be non-empty text")
            needle = match.casefold()
            hits = {r["id"] for r in rows
                    if any(needle in (r[k] or "").casefold() for k in ("prompt", "response", "feedback_correction"))}
            hits |= {r["id"] for r in self.log.search(match) if r["session_id"] == session_id}
            return sorted(hits & own)
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError(f"ids must be a list of integers, got {ids!r}")
        missing = sorted(set(ids) - own)
        if missing:
            raise NotFound(f"session {session_id!r} has no interactions {missing}")
        return sorted(set(ids))

    def forget(self, session_id: str, *, ids: list[int] | None = None, match: str | None = None,
               everything: bool = False, mode: str = "exact") -> dict:
        """Forget rows of ``session_id`` (see :meth:`select_own`); returns the ForgetReport as a dict.

        An attached learner is detached for the duration (so no batch built before the forget
        trains on a forgotten row) and attached again with the same options.

        Raises:
            NotImplementedError: this Learner cannot forget yet.
        """
        if mode not in FORGET_MODES:
            raise ValueError(f"mode={mode!r} (expected one of {FORGET_MODES})")
        if not hasattr(self.learner, "forget"):
            raise NotImplementedError("this synclearn's Learner cannot forget yet")
        with self._control:
            self._check_open()
            chosen = self.select_own(session_id, ids=ids, match=match, everything=everything)
            was_attached = self.attached
            if was_attached:
                self.handle.detach()
            try:
                report = self.learner.forget(ids=chosen, mode=mode)
                if report.mode == "approximate":
                    self.save()  # it changed the weights without a persist call
            finally:
                if was_attached:
                    again = self.attach_defaults.replace(**self.attach_options)
                    self.handle = self.learner.attach(self.load, **self.attach_objects, **again.kwargs())
        return report.to_dict()

    def forget_everywhere(self, *, ids: list[int] | None = None, match: str | None = None,
                          since: float | None = None, until: float | None = None, mode: str = "exact") -> dict:
        """The operator's forget: rows of EVERY session, by ids, text or time; returns the report.

        Exactly one selector: ``ids`` (all must exist), ``match`` (every row whose prompt,
        response or correction contains the text, case-insensitively, or that the log's
        full-text search finds: the user's words and the model's own replies alike), or a time
        range ``since <= created_at < until`` (either end may be open). Built on
        :meth:`Learner.forget` like :meth:`forget`: the learner is detached for the duration
        and attached again with the same options. Only the device's owner may call this (the
        server checks the admin key); users forget with :meth:`forget`.

        Raises:
            NotFound: some ``ids`` do not exist. ValueError: bad selectors or mode.
        """
        from synclearn.learn.forget import ForgetReport

        if mode not in FORGET_MODES:
            raise ValueError(f"mode={mode!r} (expected one of {FORGET_MODES})")
        timed = since is not None or until is not None
        given = [n for n, v in (("ids", ids), ("match", match), ("since/until", timed or None)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"forget needs exactly one of ids, match, since/until; got {given or 'none'}")
        with self._control:
            self._check_open()
            if match is not None:
                if not isinstance(match, str) or not match.strip():
                    raise ValueError("match must be non-empty text")
                needle = match.casefold()
                chosen = {r["id"] for r in self.log.iter_rows()
                          if any(needle in (r[k] or "").casefold() for k in ("prompt", "response", "feedback_correction"))}
                chosen |= {r["id"] for r in self.log.search(match)}
            elif timed:
                lo = float("-inf") if since is None else float(since)
                hi = float("inf") if until is None else float(until)
                if not lo < hi:
                    raise ValueError(f"the time range is empty: since={since!r} >= until={until!r}")
                chosen = {r["id"] for r in self.log.between(lo, hi)}
            else:
                if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                    raise ValueError(f"ids must be a list of integers, got {ids!r}")
                missing = sorted(set(ids) - {r["id"] for r in self.log.get_many(ids)})
                if missing:
                    raise NotFound(f"the log has no interactions {missing}")
                chosen = set(ids)
            if not chosen:
                report = ForgetReport(mode="noop", ids=[], version_before=self.version, version_after=self.version,
                                      note="nothing matched the request; nothing changed")
                return report.to_dict()
            was_attached, options = self.attached, dict(self.attach_options)
            if was_attached:
                self.detach()
            try:
                report = self.learner.forget(ids=sorted(chosen), mode=mode)
                if report.mode == "approximate":
                    self.save()  # it changed the weights without a persist call
            finally:
                if was_attached:
                    self.attach(**options)  # the same options as before (the control lock is reentrant)
        return report.to_dict()

    # -- checkpoints -------------------------------------------------------------------------------------
    def save(self, *, force: bool = True) -> dict | None:
        """Checkpoint now; with ``force=False`` only when weights or learner steps changed.
        Returns the manifest (None when nothing was written)."""
        if self.checkpoints is None:
            return None
        with self.learner.exclusive():  # not the control lock: forget() saves from inside the learner's
            last = self.last_checkpoint
            unchanged = last is not None and last["weight_version"] == self.version \
                and last["committed_steps"] == self.learner.committed_steps
            if not force and (unchanged or (last is None and self.version == 0)):
                return None
            return self._persist()

    def _persist(self) -> dict:
        self.last_checkpoint = self.checkpoints.save(self.model, self.learner, base=self.base, seed=self.seed,
                                                     log=self.log)
        return self.last_checkpoint

    def _autosave_loop(self, period: float) -> None:
        while not self._stop.wait(period):
            try:
                self.save(force=False)
            except Exception as err:  # keep serving; the next period tries again
                self.autosave_error = f"{type(err).__name__}: {err}"
                logger.error("autosave failed (retrying in %.0f s): %s", period, self.autosave_error)

    def _check_open(self) -> None:
        if self._closed:
            raise Conflict("the runtime is closed")

    def close(self) -> None:
        """Detach, write a final checkpoint (if anything changed) and close the log. Idempotent."""
        self._stop.set()
        if self._autosave is not None and self._autosave is not threading.current_thread():
            self._autosave.join(timeout=60)  # before taking the control lock: a save may hold it
        with self._control:
            if self._closed:
                return
            try:
                self.detach()
                self.save(force=False)
            finally:
                self._closed = True
                self.log.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
