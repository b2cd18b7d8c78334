"""WeightGuard: the readers-writer lock between serving and learning, with a version counter.

One copy of the weights is shared. Readers (a decode step: all layers, one token; a prefill)
hold the read lock; the learner holds the write lock only while it writes the new slices in
(``index_copy_``), and each successful write raises ``version`` by one. A reader therefore
always computes from exactly one version, never from a half-written update.

Writers are preferred: once a commit is waiting, new readers wait, so a steady stream of
decode steps cannot starve the learner (each commit is a few ``index_copy_`` calls).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator


GUARD_ATTRIBUTE = "synclearn_guard"  # where a model keeps its guard (set only by guard_for)


class GuardTimeout(TimeoutError):
    """The lock could not be taken within the given timeout."""


class WeightGuard:
    """Readers-writer lock with a weight version (starts at 0)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self.version = 0

    def __deepcopy__(self, memo: dict) -> "WeightGuard":
        """A copied model gets a guard of its own (locks cannot be shared by copying)."""
        return WeightGuard()

    @contextlib.contextmanager
    def read(self, timeout: float | None = None) -> Iterator[int]:
        """Hold the weights steady; yields the version being read."""
        with self._cond:
            if not self._cond.wait_for(lambda: not self._writer and not self._writers_waiting, timeout):
                raise GuardTimeout(f"read lock not acquired within {timeout}s")
            self._readers += 1
            version = self.version
        try:
            yield version
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self, timeout: float | None = None) -> Iterator[int]:
        """Exclusive access for a commit; yields the version the commit will create. The version
        is raised when the block exits normally (an exception leaves it unchanged)."""
        with self._cond:
            self._writers_waiting += 1
            try:
                if not self._cond.wait_for(lambda: not self._writer and not self._readers, timeout):
                    raise GuardTimeout(f"write lock not acquired within {timeout}s")
            finally:
                self._writers_waiting -= 1
            self._writer = True
        ok = False
        try:
            yield self.version + 1
            ok = True
        finally:
            with self._cond:
                if ok:
                    self.version += 1
                self._writer = False
                self._cond.notify_all()


_CREATE = threading.Lock()  # two threads asking at once get the same guard


def guard_for(model: Any) -> WeightGuard:
    """The model's guard, created on first use; serving and learning find the same one.
    Thread-safe: concurrent first calls create one guard."""
    guard = model.__dict__.get(GUARD_ATTRIBUTE)
    if guard is None:
        with _CREATE:
            guard = model.__dict__.get(GUARD_ATTRIBUTE)
            if guard is None:
                guard = WeightGuard()
                object.__setattr__(model, GUARD_ATTRIBUTE, guard)
    return guard
