"""Work prepared aside: a copy of a model that shares everything a learner will not write.

An exact forget rolls steps back and re-runs others; done on the served model, serving would
see every intermediate state. Instead the work runs on a fork (:meth:`AsideWork.fork`: a
learner on :func:`copy_sharing`'s copy of the model, where only the tensors the update rule
writes are duplicated: the plastic layers' MLP weights for sparse updates, the adapters for
LoRA, every weight for full updates), and the result is swapped in by
:meth:`AsideWork.adopt` under one write lock.

The copy computes bitwise what the original would: same values, same operations.
"""

from __future__ import annotations

import copy
import threading
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from synclearn.learn.guard import guard_for


def _storage(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


def copy_sharing(model: nn.Module, mutable: Sequence[Tensor]) -> nn.Module:
    """A deep copy of ``model`` in which every parameter and buffer that shares no storage with
    ``mutable`` is the original object (not copied). The copy gets its own
    :class:`~synclearn.learn.guard.WeightGuard` (weight version 0)."""
    written = {_storage(t) for t in mutable}
    memo: dict[int, object] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        if _storage(tensor) not in written:
            memo[id(tensor)] = tensor
    return copy.deepcopy(model, memo)


@torch.no_grad()
def copy_tensors(targets: Sequence[Tensor], sources: Sequence[Tensor]) -> int:
    """``target.copy_(source)`` pairwise (the caller holds the write lock); returns the bytes copied.

    Raises:
        ValueError: the lists do not pair up (different lengths or shapes).
    """
    if len(targets) != len(sources):
        raise ValueError(f"{len(targets)} target tensors for {len(sources)} sources")
    total = 0
    for target, source in zip(targets, sources):
        if target.shape != source.shape:
            raise ValueError(f"cannot copy a {tuple(source.shape)} tensor into a {tuple(target.shape)} one")
        if target.data_ptr() != source.data_ptr():
            target.copy_(source)
            total += target.nbytes
    return total


class AsideWork:
    """The fork/adopt half of the Learner (see module docstring)."""

    def fork(self, journal: Any = None) -> Any:
        """A learner on a copy of the model that shares every tensor steps never write: work done
        on it (undo, re-run, unlearning) is invisible to serving until :meth:`adopt`. It has this
        learner's settings, optimizer state and neuron controls, records into ``journal``, has no
        observers and no persist. Call under :meth:`exclusive`."""
        with self._lock:
            other = object.__new__(type(self))
            other.__dict__.update(self.__dict__)
            other.model = copy_sharing(self.model, self._rule.mutable_tensors())
            other.guard = guard_for(other.model)
            other._lock = threading.RLock()
            other._controls = self._controls.copy()
            other._rule = self._rule.fork(other.model)
            other._rule.controls = other._controls
            other._journal, other._observers, other._persist = journal, [], None
            other._handle = other._builder = other.memory = None
            return other

    def adopt(self, other: Any) -> int:
        """Swap in a :meth:`fork`'s weights, optimizer state and step count under ONE write lock:
        serving sees the weights before or after, never in between. Returns the new version."""
        with self._lock, self.guard.write() as version:
            copy_tensors(self._rule.mutable_tensors(), other._rule.mutable_tensors())
            self._rule.adopt(other._rule)
            self.committed_steps = other.committed_steps
            self._sync_device()
        return version

    def roll_back(self, records: Sequence[Any]) -> None:
        """Undo journaled steps (``records`` oldest first, as the journal lists them; undone
        newest first) and rewind the step counter to the first one's index: on a fork, so
        serving never sees it."""
        with self._lock:
            for rec in reversed(records):
                self.undo(rec.undo)
            if records:
                self.committed_steps = records[0].index
