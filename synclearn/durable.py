"""Durable files: the one place synclearn writes a file that must survive a crash.

    atomic_write(path, lambda tmp: torch.save(obj, tmp))
    atomic_write_text(path, json.dumps(manifest))

Every durable write goes the same way: the content is written to a temporary file in the
target's folder, the file is fsynced, renamed over the target (``os.replace`` is atomic on
POSIX), and then the folder is fsynced so the rename itself is on disk. After a crash the
target is therefore either the old complete file or the new complete file, never a mix;
leftover temporary files are named ``.<target name>.<random>`` and can be removed at any
time (:func:`remove_temporaries`).

Used by model checkpoints (:mod:`synclearn.model.checkpoint`), serving checkpoints
(:mod:`synclearn.chat.checkpoint`), the step journal (:mod:`synclearn.memory.journal`) and
the forget intents (:mod:`synclearn.learn.forget`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the folder's entries (creations, renames, deletions) durable. A no-op where the
    platform cannot open folders."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(target: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write ``target`` durably via ``write(temp_path)``: temp file in the same folder, fsync
    the file, rename over ``target``, fsync the folder.

    Raises:
        whatever ``write`` raises; the target is then unchanged and the temp file removed.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(target.parent)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    atomic_write(target, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def remove_durably(path: str | os.PathLike) -> None:
    """Delete a file (if present) and fsync its folder, so the deletion survives a crash."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def remove_temporaries(folder: str | os.PathLike, name: str) -> int:
    """Remove the temp files an interrupted :func:`atomic_write` of ``folder/name`` left;
    returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.iterdir() if p.name.startswith(f".{name}.")]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)
