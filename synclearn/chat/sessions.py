"""The server's table of conversations: session id -> ChatSession, least recently used evicted.

An entry is held from :meth:`SessionTable.get` until :meth:`SessionTable.release` and is never
evicted while held, so a request never computes on a session that another request dropped.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from synclearn.chat.runtime import Runtime


class SessionEntry:
    """One conversation of the table: its ChatSession, system prompt, turn lock and users."""

    def __init__(self, chat: Any) -> None:
        self.chat, self.system = chat, None
        self.lock = threading.Lock()  # one turn (or forget) of this session at a time
        self.users = 0  # requests holding the entry (between get and release): never evicted


class SessionTable:
    """Conversation id -> ChatSession, least recently used evicted past ``capacity``.

    ``get`` pins the entry until ``release``: an entry in use is never evicted, so two
    requests of one session always share one ChatSession (and its lock).
    """

    def __init__(self, runtime: Runtime, capacity: int) -> None:
        self.runtime, self.capacity = runtime, capacity
        self._entries: OrderedDict[str, SessionEntry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, session_id: str) -> SessionEntry:
        """The session's entry, pinned (call :meth:`release` when done)."""
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None:
                entry = self._entries[session_id] = SessionEntry(self.runtime.new_session(session_id))
            entry.users += 1
            self._entries.move_to_end(session_id)
            self._evict()
            return entry

    def release(self, entry: SessionEntry) -> None:
        with self._lock:
            entry.users -= 1
            self._evict()

    def _evict(self) -> None:
        for sid in list(self._entries):  # oldest first; never one in use
            if len(self._entries) <= self.capacity:
                break
            if self._entries[sid].users == 0:
                del self._entries[sid]

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._entries.pop(session_id, None)

    def clear(self) -> None:
        """Forget every session's state (after an operator forget: they may hold what was said)."""
        with self._lock:
            self._entries.clear()

    def prepare(self, entry: SessionEntry, system: str | None, history: list[dict[str, str]]) -> Any:
        """The entry's ChatSession, positioned right after ``history`` (call with entry.lock held)."""
        chat = entry.chat
        if entry.system == system and chat.history == history:
            return chat
        rt = self.runtime
        chat = entry.chat = rt.new_session(chat.session_id, system=system)
        entry.system = system
        if history:  # prefill the conversation so far (not logged again)
            chat.load_history(history, system=system)
        return chat
