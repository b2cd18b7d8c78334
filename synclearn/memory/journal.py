"""The step journal: what every committed learning step used and changed, for exact rollback.

For each committed step the journal keeps, on disk (one file per step, written atomically and
fsynced with :func:`synclearn.durable.atomic_write`):

* ``index``: the learner's committed-step counter before the step (it seeds neuron selection);
* ``examples``: the exact examples the step learned from (ids included), so later steps can be
  re-run without a forgotten record;
* ``undo``: what the step overwrote -- for sparse updates, per layer the old weight rows and
  the optimizer rows of the touched and evicted neurons plus the table's LRU order; for
  LoRA/full updates, the trainable parameters and optimizer state.

A step file is ``step-<index>.safetensors``: the tensors of the record in safetensors, and
the rest of it (examples, structure, numbers) as JSON in the file's metadata under
``"record"``, where every tensor appears as ``{"$t": name}`` (see :func:`encode`). Nothing is
pickled, so loading a journal runs no code.

The journal is bounded by a number of steps and a number of bytes; the oldest steps are
dropped first (a forget request older than the window falls back to approximate unlearning).
Entries are removed with the file; forgotten text therefore leaves the journal when the
steps that used it are rolled back and re-run. ``ids.json`` remembers which interaction ids
every step ever recorded used (dropped steps too), to tell "learned before the window" from
"never learned".
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from synclearn.durable import atomic_write, atomic_write_text, remove_durably, remove_temporaries

logger = logging.getLogger(__name__)
SUFFIX = ".safetensors"


def encode(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """``obj`` (nested dicts, lists, tuples, tensors, JSON scalars) as JSON; its tensors go into
    ``tensors`` (CPU, contiguous copies) and are referenced as ``{"$t": name}``. Tuples become
    ``{"$tuple": [...]}``, dicts with non-string keys ``{"$dict": [[key, value], ...]}``."""
    if isinstance(obj, Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()
        return {"$t": name}
    if isinstance(obj, tuple):
        return {"$tuple": [encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: encode(v, tensors) for k, v in obj.items()}
        return {"$dict": [[encode(k, tensors), encode(v, tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"the step journal stores tensors, numbers, strings, lists and dicts; got {type(obj).__name__}")


def decode(data: Any, tensors: dict[str, Tensor]) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(data, list):
        return [decode(v, tensors) for v in data]
    if isinstance(data, dict):
        if "$t" in data:
            return tensors[data["$t"]]
        if "$tuple" in data:
            return tuple(decode(v, tensors) for v in data["$tuple"])
        if "$dict" in data:
            return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in data["$dict"]}
        return {k: decode(v, tensors) for k, v in data.items()}
    return data


def replayable_examples(examples: Any) -> list:
    """``examples`` as a list the journal can store and a forget can re-run (dicts or str).

    Raises:
        ValueError: ``examples`` is missing (a prepared batch alone cannot be re-run) or holds
            something JSON cannot carry.
    """
    if examples is None or not isinstance(examples, (list, tuple)):
        raise ValueError("a journaling learner needs the step's examples (dicts or str) to re-run it; "
                         "use step(examples), or step_batch(batch, examples)")
    try:
        encode(list(examples), {})
    except TypeError as err:
        raise ValueError(f"a journaling learner records examples as JSON: {err}") from None
    return list(examples)


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


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
        for f in sorted(self.path.glob(f"step-*{SUFFIX}")):
            self._sizes[int(f.name[len("step-") : -len(SUFFIX)])] = f.stat().st_size
        for f in self.path.iterdir():  # writes that never completed
            if f.name.startswith(".step-"):
                f.unlink()
        remove_temporaries(self.path, "ids.json")
        index_file = self.path / "ids.json"
        self._ids: dict[int, list[int]] = (
            {int(k): v for k, v in json.loads(index_file.read_text()).items()} if index_file.exists() else {}
        )

    def file(self, index: int) -> Path:
        """The file of step ``index`` (whether or not it exists)."""
        return self.path / f"step-{index:010d}{SUFFIX}"

    @property
    def indices(self) -> list[int]:
        return sorted(self._sizes)

    @property
    def nbytes(self) -> int:
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def empty(self) -> bool:
        """True when no step was ever recorded (dropped ones included)."""
        return not self._ids and not self._sizes

    def record(self, rec: StepRecord) -> None:
        """Add a step (atomically, fsynced) and drop the oldest ones beyond the bounds."""
        tensors: dict[str, Tensor] = {}
        meta = json.dumps({"index": rec.index, "examples": encode(rec.examples, tensors),
                           "undo": encode(rec.undo, tensors)})
        target = self.file(rec.index)
        atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata={"record": meta}))
        self._sizes[rec.index] = target.stat().st_size
        self._ids[rec.index] = sorted(rec.ids)
        self._save_ids()
        while len(self._sizes) > self.max_steps or (self.nbytes > self.max_bytes and len(self._sizes) > 1):
            oldest = min(self._sizes)
            remove_durably(self.file(oldest))
            del self._sizes[oldest]

    def _save_ids(self) -> None:
        atomic_write_text(self.path / "ids.json", json.dumps(self._ids))

    def load(self, index: int) -> StepRecord:
        with safe_open(str(self.file(index)), framework="pt") as f:
            data = json.loads(f.metadata()["record"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        return StepRecord(data["index"], decode(data["examples"], tensors), decode(data["undo"], tensors),
                          self._sizes.get(index, 0))

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
            remove_durably(self.file(i))
        self._sizes.clear()
        logger.info("step journal %s sealed: earlier steps can no longer be undone exactly", self.path)

    def truncate_from(self, index: int) -> None:
        """Remove every step >= ``index`` (they are about to be re-run and re-recorded)."""
        for i in [i for i in self._sizes if i >= index]:
            remove_durably(self.file(i))
            del self._sizes[i]
        self._ids = {i: v for i, v in self._ids.items() if i < index}
        self._save_ids()
