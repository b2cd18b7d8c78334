"""The step journal: what every committed learning step used and changed, for exact rollback.

For each committed step the journal keeps, on disk (one file per step, written atomically):

* ``index``: the learner's committed-step counter before the step (it seeds neuron selection);
* ``examples``: the exact examples the step learned from (ids included), so later steps can be
  re-run without a forgotten record;
* ``undo``: what the step overwrote -- for sparse updates, per layer the old weight rows and
  the optimizer rows of the touched and evicted neurons plus the table's LRU order; for
  LoRA/full updates, the trainable parameters and optimizer state.

The journal is bounded by a number of steps and a number of bytes; the oldest steps are
dropped first (a forget request older than the window falls back to approximate unlearning).
Entries are removed with the file; forgotten text therefore leaves the journal when the
steps that used it are rolled back and re-run.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class StepRecord:
    """One journaled step (see module docstring)."""

    index: int
    examples: list[Any]
    undo: dict[str, Any]
    nbytes: int = 0

    @property
    def ids(self) -> set[int]:
        return {int(e["id"]) for e in self.examples if isinstance(e, dict) and e.get("id") is not None}


class StepJournal:
    """Bounded, on-disk journal of learning steps.

    Args:
        path: directory for the step files (created). Existing entries are loaded.
        max_steps: most steps kept.
        max_bytes: most bytes of undo records kept (the newest step is always kept).
    """

    def __init__(self, path: str | os.PathLike, *, max_steps: int = 1000, max_bytes: int = 1 << 30) -> None:
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps={max_steps!r} (expected a positive integer)")
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes={max_bytes!r} (expected a positive integer)")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.max_steps, self.max_bytes = max_steps, max_bytes
        self._sizes: dict[int, int] = {}
        for f in sorted(self.path.glob("step-*.pt")):
            self._sizes[int(f.stem.split("-")[1])] = f.stat().st_size
        for f in self.path.glob("partial-step-*"):  # a write that never completed
            f.unlink()
        # ids used by every step ever recorded, dropped ones too (ids only, no text): tells
        # "learned before the window" apart from "never learned"
        index_file = self.path / "ids.json"
        self._ids: dict[int, list[int]] = (
            {int(k): v for k, v in json.loads(index_file.read_text()).items()} if index_file.exists() else {}
        )

    def _file(self, index: int) -> Path:
        return self.path / f"step-{index:010d}.pt"

    @property
    def indices(self) -> list[int]:
        return sorted(self._sizes)

    @property
    def nbytes(self) -> int:
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._sizes)

    def record(self, rec: StepRecord) -> None:
        """Add a step (atomically) and drop the oldest ones beyond the bounds."""
        target = self._file(rec.index)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix="partial-step-", suffix=".part")
        os.close(fd)
        try:
            torch.save({"index": rec.index, "examples": rec.examples, "undo": rec.undo}, tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._sizes[rec.index] = target.stat().st_size
        self._ids[rec.index] = sorted(rec.ids)
        self._save_ids()
        while len(self._sizes) > self.max_steps or (self.nbytes > self.max_bytes and len(self._sizes) > 1):
            oldest = min(self._sizes)
            self._file(oldest).unlink(missing_ok=True)
            del self._sizes[oldest]

    def _save_ids(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".ids-")
        with os.fdopen(fd, "w") as f:
            json.dump(self._ids, f)
        os.replace(tmp, self.path / "ids.json")

    def load(self, index: int) -> StepRecord:
        data = torch.load(self._file(index), weights_only=False)
        return StepRecord(data["index"], data["examples"], data["undo"], self._sizes.get(index, 0))

    def first_using(self, ids: set[int]) -> int | None:
        """The earliest step ever recorded (journaled or already dropped) that used any of ``ids``."""
        hits = [index for index, used in self._ids.items() if ids.intersection(used)]
        return min(hits) if hits else None

    def covers(self, index: int) -> bool:
        """Whether step ``index`` and every later step are still in the journal."""
        return index in self._sizes and all(i in self._sizes for i in self._ids if i >= index)

    def seal(self) -> None:
        """Drop every step's undo record but remember which ids they used: after an inexact
        change (approximate unlearning) no earlier step can be undone exactly any more."""
        for i in list(self._sizes):
            self._file(i).unlink(missing_ok=True)
        self._sizes.clear()

    def truncate_from(self, index: int) -> None:
        """Remove every step >= ``index`` (they are about to be re-run and re-recorded)."""
        for i in [i for i in self._sizes if i >= index]:
            self._file(i).unlink(missing_ok=True)
            del self._sizes[i]
        self._ids = {i: v for i, v in self._ids.items() if i < index}
        self._save_ids()
