"""Forget requests: the records leave the log for real, and their influence leaves the weights.

    report = learner.forget(ids=[...] | session_id=... | match="text", mode="exact")

* The records are always deleted from the InteractionLog (secure delete, FTS purge, WAL
  truncation; see :meth:`InteractionLog.delete`).
* ``mode="exact"``: the step journal (:mod:`synclearn.memory.journal`) has, for every
  committed step, its examples and undo records. The learner undoes every step from the first
  one that used a forgotten record, then re-runs the later steps without those records. The
  result is bitwise the model (and optimizer state) that never learned them -- given that
  neuron locks and damping did not change in between (they are not journaled).
* ``mode="approximate"``: for records older than the journal window; gradient ascent on the
  forgotten examples with a retain term (descent on a sample of remembered ones), until their
  likelihood falls to the never-seen level or a step budget runs out. The journal is cleared
  afterwards (the steps before it can no longer be undone exactly). Reported as approximate.
* ``mode="auto"``: exact when the journal covers the records, else approximate.

Every request returns a :class:`ForgetReport` with the verification: mean per-token NLL of
the forgotten items before and after, a never-seen control (the same responses with their
words shuffled), and the change on retained items.

Crash safety (with ``learner.persist`` set, e.g. a checkpoint writer): the new state is
computed with the new journal steps staged aside; then an intent file is written, the state
persisted (tagged with the forget's epoch), and only then are the journal swapped and the log
rows deleted. :func:`recover` at start-up rolls a half-done forget forward (the persisted
state has the new epoch) or back (it does not), so the log and model agree either way.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from synclearn.learn.batch import build_batch, masked_loss

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


# -- verification ---------------------------------------------------------------------------------
def mean_nll(learner: Any, examples: Sequence[dict]) -> float | None:
    """Mean over examples of the per-token NLL of their responses (read under the read lock)."""
    examples = [{"prompt": e["prompt"], "response": e["response"]} for e in examples if e.get("response")]
    if not examples:
        return None
    batch = build_batch(learner.model.tokenizer, examples, max_seq_len=learner.max_seq_len,
                        pad_id=learner.pad_id, device=learner.model.device)
    with torch.no_grad(), learner.guard.read():
        _, per_example = masked_loss(learner.model(batch.inputs), batch)
    return float(per_example.mean())


def shuffled_controls(examples: Sequence[dict], seed: int = 0) -> list[dict]:
    """Never-seen controls: each response with its words in a seeded random order."""
    rng = random.Random(seed)
    out = []
    for e in examples:
        words = e["response"].split()
        for _ in range(5):
            rng.shuffle(words)
            if " ".join(words) != e["response"] or len(words) < 2:
                break
        out.append({"prompt": e["prompt"], "response": " ".join(words)})
    return out


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
        have = {e["id"] for e in examples}
        for index in learner.journal.indices:
            for e in learner.journal.load(index).examples:
                if isinstance(e, dict) and e.get("id") in set(found) - have:
                    examples.append(dict(e))
                    have.add(e["id"])
    return found, examples


def _retained(learner: Any, forgotten: set[int], k: int) -> list[dict]:
    """Up to ``k`` remembered examples: the latest journaled ones, else the latest log rows."""
    out: list[dict] = []
    if learner.journal is not None:
        for index in reversed(learner.journal.indices):
            for e in learner.journal.load(index).examples:
                if isinstance(e, dict) and e.get("id") not in forgotten and len(out) < k:
                    out.append(e)
    if not out and learner.log is not None:  # learned rows first, else any remaining rows
        keep = [i for i in learner.log.ids(learned=True) if i not in forgotten][-k:]
        keep = keep or [i for i in learner.log.ids() if i not in forgotten][-k:]
        out = [{"id": r["id"], "prompt": r["prompt"], "response": r["response"]} for r in learner.log.get_many(keep)]
    return out


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
        targets = set(found)
        journal = learner.journal
        first = journal.first_using(targets) if journal is not None else None
        learned_rows = learner.log is not None and any(r["learned_at"] for r in learner.log.get_many(found))
        # without a journal nothing proves a record was never learned: assume it was
        report.learned = first is not None or learned_rows or journal is None
        exact_possible = journal is not None and (first is None and not learned_rows or
                                                  first is not None and journal.covers(first))
        if mode == "auto":
            mode = "exact" if exact_possible else "approximate"
        if mode == "exact" and not exact_possible:
            why = ("the learner keeps no step journal" if journal is None else
                   "the steps that learned them are older than the journal window")
            raise ForgetError(f"cannot forget {len(found)} record(s) exactly: {why}; use mode='approximate' (or 'auto')")
        retained = _retained(learner, targets, retain_k)
        report.forgotten_nll_before = mean_nll(learner, examples)
        report.retained_nll_before = mean_nll(learner, retained)

        if not report.learned:
            report.mode, report.note = "noop", "the records were never learned; the weights are unchanged"
            report.deleted = _delete_rows(learner, found)
        elif mode == "exact":
            report.mode = "exact"
            _exact(learner, targets, first, report)
        else:
            report.mode = "approximate"
            _approximate(learner, examples, retained, report, max_unlearn_steps, unlearn_lr, seed, retain_weight)
            report.deleted = _delete_rows(learner, found)
        report.forgotten_nll_after = mean_nll(learner, examples)
        report.control_nll = mean_nll(learner, shuffled_controls(examples, seed))
        report.retained_nll_after = mean_nll(learner, retained)
        return _finish(report, learner, t0)


def _finish(report: ForgetReport, learner: Any, t0: float) -> ForgetReport:
    report.version_after = learner.guard.version
    report.seconds = time.perf_counter() - t0
    return report


def _delete_rows(learner: Any, ids: list[int]) -> int:
    if learner.log is None:
        return 0
    return len(learner.log.delete(ids=ids, reason="forget request"))


# -- exact: undo, re-run without the records, then commit in a crash-safe order -------------------
def _exact(learner: Any, targets: set[int], first: int, report: ForgetReport) -> None:
    journal = learner.journal
    records = [journal.load(i) for i in journal.indices if i >= first]
    epoch = uuid.uuid4().hex
    staging_dir = journal.path / f"staging-{epoch}"
    from synclearn.memory.journal import StepJournal

    staging = StepJournal(staging_dir, max_steps=journal.max_steps, max_bytes=journal.max_bytes)
    for rec in reversed(records):
        learner.undo(rec.undo)
    learner.committed_steps = first
    with learner.journaling_to(staging):  # re-run steps are recorded aside until the commit point
        for rec in records:
            kept = [e for e in rec.examples if not (isinstance(e, dict) and e.get("id") in targets)]
            if kept:
                result = learner.step(kept)
                report.steps_rerun += 0 if result.skipped else 1
    report.steps_rolled_back = len(records)
    _write_intent(journal.path, {"epoch": epoch, "first": first, "ids": sorted(targets), "staging": staging_dir.name})
    learner.forget_epoch = epoch
    if learner.persist is not None:
        learner.persist()
    report.deleted = _roll_forward(learner, journal.path)


def _write_intent(path: Path, intent: dict) -> None:
    tmp = path / f".{INTENT}.tmp"
    tmp.write_text(json.dumps(intent))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path / INTENT)


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
    (path / INTENT).unlink()
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
        for stale in journal.path.glob("staging-*"):  # a forget that died before its commit point
            shutil.rmtree(stale, ignore_errors=True)
        return "none"
    intent = json.loads(intent_file.read_text())
    if getattr(learner, "forget_epoch", None) == intent["epoch"]:
        _roll_forward(learner, journal.path)
        return "rolled forward"
    shutil.rmtree(journal.path / intent["staging"], ignore_errors=True)
    intent_file.unlink()
    return "rolled back"


# -- approximate: gradient ascent on the forgotten, descent on the retained -----------------------
def _approximate(learner: Any, examples: list[dict], retained: list[dict], report: ForgetReport,
                 max_steps: int, lr: float | None, seed: int, retain_weight: float) -> None:
    if not examples:
        raise ForgetError("approximate forgetting needs the records' text (from the log or the journal)")
    forget_set = [{"prompt": e["prompt"], "response": e["response"]} for e in examples]
    retain_set = [{"prompt": e["prompt"], "response": e["response"]} for e in retained]
    controls = shuffled_controls(forget_set, seed)
    saved_lr = _set_lr(learner, lr)
    target = None
    try:
        for step in range(max_steps):
            # the never-seen level moves as the model changes: compare against it every step
            current, target = mean_nll(learner, forget_set), mean_nll(learner, controls)
            if current >= target:
                break
            batch = build_batch(learner.model.tokenizer, forget_set + retain_set, max_seq_len=learner.max_seq_len,
                                pad_id=learner.pad_id, device=learner.model.device)
            # gradient difference, each set weighted as a whole: ascend on the mean loss of the
            # forgotten records, descend on ``retain_weight`` x the mean loss of the retained ones
            batch.weights[: len(forget_set)] = -1.0 / len(forget_set)
            batch.weights[len(forget_set) :] = retain_weight / max(1, len(retain_set))
            result = learner.step_batch(batch, record=False)
            report.unlearn_steps += 0 if result.skipped else 1
    finally:
        _set_lr(learner, saved_lr)
    if learner.journal is not None:  # earlier steps can no longer be undone exactly
        learner.journal.seal()
    report.extra["target_nll"] = target


def _set_lr(learner: Any, lr: float | None) -> float | None:
    if lr is None:
        return None
    old = learner.optimizer.lr if learner.update == "sparse" else learner.optimizer.param_groups[0]["lr"]
    if learner.update == "sparse":
        learner.optimizer.lr = lr
    else:
        for group in learner.optimizer.param_groups:
            group["lr"] = lr
    return old
