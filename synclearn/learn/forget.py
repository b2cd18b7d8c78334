"""Forget requests: the records leave the log for real, and their influence leaves the weights.

    report = learner.forget(ids=[...] | session_id=... | match="text", mode="exact")

* The records are always deleted from the InteractionLog (secure delete, FTS purge, WAL
  truncation; see :meth:`InteractionLog.delete`).
* ``mode="exact"``: the step journal (:mod:`synclearn.memory.journal`) has, for every committed
  step, its examples and undo record. On a fork of the learner (:mod:`synclearn.learn.aside`)
  every step from the first one that used a forgotten record is undone, and the later steps
  are re-run without those records; the fork is then swapped in. The result is bitwise the
  model (and optimizer state) that never learned them -- given that neuron protection and
  damping did not change in between (they are not journaled).
* ``mode="approximate"``: for records older than the journal window; gradient ascent on the
  forgotten examples with a retain term (:mod:`synclearn.learn.unlearn`), also on a fork. The
  journal is sealed afterwards (earlier steps can no longer be undone exactly).
* ``mode="auto"``: exact when the journal covers the records, else approximate.
* Records no journaled step ever used were never learned: the rows are deleted, the weights
  stay, and the report says so (``mode="noop"``).

Every request returns a :class:`ForgetReport` with the verification: mean per-token NLL of
the forgotten items before and after, a never-seen control (the same responses with their
words shuffled), and the change on retained items.

The protocol of an exact forget, and its invariants (one module owns it)
------------------------------------------------------------------------
The whole request holds the learner's step lock (no step, save or other forget meanwhile).

1. PREPARE, aside: fork, undo, re-run; the re-run steps are journaled into
   ``<journal>/staging-<epoch>/``. Serving reads the old weights throughout.
   A crash here leaves only the staging folder: recovery deletes it ("none").
2. INTENT: ``<journal>/forget-intent.json`` = {epoch, first, ids, staging}, written durably
   (:func:`synclearn.durable.atomic_write`). Nothing live has changed yet.
3. SWAP: the fork's weights, optimizer state and step count are copied in under ONE write
   lock (:meth:`Learner.adopt`); the learner's ``forget_epoch`` becomes ``epoch``. Serving
   sees the old weights or the new ones, never one in between.
4. PERSIST: ``learner.persist()`` (e.g. a checkpoint) writes the state tagged with ``epoch``.
   This is the commit point. A crash before it: the persisted state has an older epoch, the
   log still has the rows and the old journal is intact -> recovery rolls BACK (deletes the
   staging folder and the intent): model, journal and log agree on "not forgotten".
5. ROLL FORWARD: the journal drops steps >= first and takes the staged ones; the log rows are
   deleted; the intent and staging folder are removed. A crash in here: the persisted epoch
   equals the intent's -> recovery rolls FORWARD again (every step is idempotent).

Recovery (:func:`recover`, called by ``Learner.recover`` after a checkpoint is loaded) decides
by one comparison: the loaded ``forget_epoch`` equals the intent's epoch -> forward, else back.
Without ``persist`` the in-memory state is the only state: steps 4-5 run at once.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from synclearn.durable import atomic_write_text, remove_durably
from synclearn.learn.anchors import is_anchor
from synclearn.learn.unlearn import mean_nll, retained_examples, shuffled_controls, unlearn

logger = logging.getLogger(__name__)
MODES = ("exact", "approximate", "auto")
INTENT = "forget-intent.json"


class ForgetError(ValueError):
    """A forget request that cannot be carried out as asked; nothing was changed."""


@dataclass
class ForgetReport:
    """What a forget request did and how well it worked.

    Attributes:
        mode: "exact", "approximate" or "noop" (nothing matched / nothing learned).
        ids: the forgotten interaction ids. deleted: rows removed from the log.
        learned: whether any of the records had been learned.
        steps_rolled_back / steps_rerun: exact mode's undo and replay counts.
        unlearn_steps: approximate mode's gradient-ascent steps.
        forgotten_nll_before / _after: mean per-token NLL of the forgotten responses.
        control_nll: the same for never-seen controls (shuffled words), after the forget.
        retained_nll_before / _after: the same on a sample of remembered records.
        version_before / version_after: weight versions. seconds: wall time.
        note: anything a user should know (e.g. why a request was a no-op).
    """

    mode: str
    ids: list[int]
    deleted: int = 0
    learned: bool = False
    steps_rolled_back: int = 0
    steps_rerun: int = 0
    unlearn_steps: int = 0
    forgotten_nll_before: float | None = None
    forgotten_nll_after: float | None = None
    control_nll: float | None = None
    retained_nll_before: float | None = None
    retained_nll_after: float | None = None
    version_before: int = 0
    version_after: int = 0
    seconds: float = 0.0
    note: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the request ----------------------------------------------------------------------------------
def _targets(learner: Any, ids, session_id, match) -> tuple[list[int], list[dict]]:
    """Resolve the selector to ids, and the examples to verify on (from the log, else the journal)."""
    given = [n for n, v in (("ids", ids), ("session_id", session_id), ("match", match)) if v is not None]
    if len(given) != 1:
        raise ForgetError(f"forget needs exactly one of ids, session_id, match; got {given or 'none'}")
    log = learner.log
    if log is not None:
        found = log.select_ids(ids, session_id=session_id, match=match)
        rows = log.get_many(found)
        examples = [{"id": r["id"], "prompt": r["prompt"], "response": r["feedback_correction"] or r["response"]}
                    for r in rows]
    elif ids is not None:
        found, examples = sorted({int(i) for i in ids}), []
    else:
        raise ForgetError("forgetting by session_id or match needs the learner's InteractionLog")
    if ids is not None:  # ids known only to the journal (their rows are gone already) still count
        found = sorted(set(found) | {int(i) for i in ids})
    if learner.journal is not None and len(examples) < len(found):
        have, wanted = {e["id"] for e in examples}, set(found)
        for index in learner.journal.indices:
            for e in learner.journal.load(index).examples:
                if isinstance(e, dict) and e.get("id") in wanted - have:
                    examples.append(dict(e))
                    have.add(e["id"])
    return found, examples


def forget(learner: Any, *, ids: Sequence[int] | None = None, session_id: str | None = None, match: str | None = None,
           mode: str = "exact", retain_k: int = 16, max_unlearn_steps: int = 50, unlearn_lr: float | None = None,
           retain_weight: float = 3.0, seed: int = 0) -> ForgetReport:
    """Carry out a forget request; see the module docstring. Returns the verified report.

    ``retain_k``, ``max_unlearn_steps``, ``unlearn_lr`` and ``retain_weight`` (how much the
    retained records' loss counts against the forgotten ones') tune approximate mode.
    """
    if mode not in MODES:
        raise ForgetError(f"mode={mode!r} (expected one of {MODES})")
    with learner.exclusive():
        t0 = time.perf_counter()
        found, examples = _targets(learner, ids, session_id, match)
        report = ForgetReport(mode="noop", ids=found, version_before=learner.guard.version)
        if not found:
            report.note = "nothing matched the request; nothing changed"
            return _finish(report, learner, t0)
        targets, journal = set(found), learner.journal
        first = journal.first_using(targets) if journal is not None else None
        # the journal knows every step it ever recorded: no step used them -> never learned.
        # Without one nothing proves that (steps may have been taken outside the log): assume so
        report.learned = first is not None or journal is None
        exact_possible = journal is not None and (first is None or journal.covers(first))
        if mode == "auto":
            mode = "exact" if exact_possible else "approximate"
        if report.learned and mode == "exact" and not exact_possible:
            why = ("the learner keeps no step journal" if journal is None else
                   f"step {first}, the first that learned them, is older than the journal window "
                   f"(it keeps steps {journal.indices[0] if len(journal) else 'none'}..)")
            raise ForgetError(f"cannot forget {len(found)} record(s) exactly: {why}; use mode='approximate' (or 'auto')")
        retained = retained_examples(learner, targets, retain_k)
        report.forgotten_nll_before = mean_nll(learner, examples)
        report.retained_nll_before = mean_nll(learner, retained)
        if not report.learned:
            report.note = ("the records were never learned (no learning step used them); they were deleted "
                           "from the log and the weights are unchanged")
            report.deleted = _delete_rows(learner, found)
        elif mode == "exact":
            report.mode = "exact"
            _exact(learner, targets, first, report)
        else:
            report.mode = "approximate"
            aside = learner.fork()
            report.unlearn_steps, report.extra["target_nll"] = unlearn(
                aside, examples, retained, max_steps=max_unlearn_steps, lr=unlearn_lr, seed=seed,
                retain_weight=retain_weight)
            if report.unlearn_steps:
                learner.adopt(aside)
            elif not any(e.get("response") for e in examples):
                report.note = "the records have no text to unlearn; they were deleted from the log"
            if journal is not None:  # earlier steps can no longer be undone exactly
                journal.seal()
            report.deleted = _delete_rows(learner, found)
        report.forgotten_nll_after = mean_nll(learner, examples)
        report.control_nll = mean_nll(learner, shuffled_controls(examples, seed))
        report.retained_nll_after = mean_nll(learner, retained)
        logger.info("forget %s: %d record(s), %d row(s) deleted, %s", report.mode, len(found), report.deleted,
                    report.note or f"version {report.version_before} -> {learner.guard.version}")
        return _finish(report, learner, t0)


def _finish(report: ForgetReport, learner: Any, t0: float) -> ForgetReport:
    report.version_after = learner.guard.version
    report.seconds = time.perf_counter() - t0
    return report


def _delete_rows(learner: Any, ids: list[int]) -> int:
    if learner.log is None:
        return 0
    return len(learner.log.delete(ids=ids, reason="forget request"))


# -- exact: prepare aside, intent, swap, persist, roll forward -------------------------------------
def _exact(learner: Any, targets: set[int], first: int, report: ForgetReport) -> None:
    from synclearn.memory.journal import StepJournal

    journal = learner.journal
    records = [journal.load(i) for i in journal.indices if i >= first]
    epoch = uuid.uuid4().hex
    staging_dir = journal.path / f"staging-{epoch}"
    staging = StepJournal(staging_dir, max_steps=journal.max_steps, max_bytes=journal.max_bytes)
    aside = learner.fork(journal=staging)  # 1. prepare
    aside.roll_back(records)
    for rec in records:
        kept = [e for e in rec.examples if not (isinstance(e, dict) and e.get("id") in targets)]
        if any(not is_anchor(e) for e in kept):  # anchors alone teach nothing: the step goes
            report.steps_rerun += 0 if aside.step(kept).skipped else 1
    report.steps_rolled_back = len(records)
    atomic_write_text(journal.path / INTENT, json.dumps(  # 2. intent
        {"epoch": epoch, "first": first, "ids": sorted(targets), "staging": staging_dir.name}))
    learner.adopt(aside)  # 3. swap, one write lock
    learner.set_forget_epoch(epoch)
    if learner.persist is not None:
        learner.persist()  # 4. the commit point
    report.deleted = _roll_forward(learner, journal.path)  # 5.


def _roll_forward(learner: Any, path: Path) -> int:
    """Finish a committed forget (idempotent): staged steps into the journal, rows out of the log."""
    from synclearn.memory.journal import StepJournal

    intent = json.loads((path / INTENT).read_text())
    journal = learner.journal
    staging_dir = path / intent["staging"]
    journal.truncate_from(intent["first"])
    if staging_dir.exists():
        staging = StepJournal(staging_dir)
        for index in staging.indices:
            journal.record(staging.load(index))
    deleted = _delete_rows(learner, intent["ids"])
    remove_durably(path / INTENT)
    shutil.rmtree(staging_dir, ignore_errors=True)
    return deleted


def recover(learner: Any) -> str:
    """After loading persisted state: finish or discard a forget that a crash interrupted.

    Returns "none", "rolled forward" (the persisted state already forgot: the log and journal
    are brought in line) or "rolled back" (it did not: the staged work is discarded, the
    log still has the rows, the old journal is intact).
    """
    journal = learner.journal
    if journal is None:
        return "none"
    intent_file = journal.path / INTENT
    if not intent_file.exists():
        for stale in journal.path.glob("staging-*"):  # a forget that died before its intent
            shutil.rmtree(stale, ignore_errors=True)
        return "none"
    intent = json.loads(intent_file.read_text())
    if learner.forget_epoch == intent["epoch"]:
        _roll_forward(learner, journal.path)
        logger.warning("a forget interrupted by a crash was rolled forward (epoch %s)", intent["epoch"])
        return "rolled forward"
    shutil.rmtree(journal.path / intent["staging"], ignore_errors=True)
    remove_durably(intent_file)
    logger.warning("a forget interrupted before its commit point was rolled back (epoch %s)", intent["epoch"])
    return "rolled back"
