"""One writer at a time: an advisory lock per model directory and per experience store.

``lqo tune`` and ``lqo train`` write a model directory (book, model, state, history,
experience); ``lqo run``/``explore`` and every other writer of an experience store write
that store. Two such processes on the same directory or store would overwrite each
other's work, so a writer takes an exclusive ``fcntl.flock`` on a lock file first
(``DIR/.lqo.lock``; ``STORE.lock`` next to a store) and a second writer stops at once
with ``BusyError`` naming the directory and the process that holds it. Readers (``lqo
compare``, ``lqo optimize``, ``lqo book show``) take no lock: what they read is
written atomically.

The kernel drops the lock when its process ends, however it ends, so a crash leaves
no stale lock; the file itself stays (removing it would race with a new writer).
Within one process the lock is re-entrant (a command holding its model directory may
open a store there, or the same store twice).

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> with writer_lock(d, f"model directory {d}"):
...     with writer_lock(d, "again, same process"):
...         pass
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lqo.errors import BusyError, LqoError

LOCK_FILE = ".lqo.lock"

_guard = threading.Lock()
_held: dict[str, list[int]] = {}  # lock file (real path) -> [fd, holders in this process]


def lock_file_for(path: str | os.PathLike[str]) -> Path:
    """The lock file guarding ``path``: ``DIR/.lqo.lock`` for a directory, else
    ``FILE.lock`` next to the file (an experience store)."""
    p = Path(path)
    return p / LOCK_FILE if p.is_dir() else p.with_name(p.name + ".lock")


class WriterLock:
    """A held lock; ``release()`` it (once) when the writing is done."""

    def __init__(self, key: str) -> None:
        self._key: str | None = key

    def release(self) -> None:
        """Release the lock (idempotent)."""
        key, self._key = self._key, None
        if key is None:
            return
        with _guard:
            entry = _held.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                os.close(entry[0])  # closing the descriptor drops the flock


def acquire(path: str | os.PathLike[str], what: str, instead: str = "another directory") -> WriterLock:
    """Take the writer lock of ``path`` (a directory or a store file) or raise
    ``BusyError``; ``what`` names it in the message (e.g. "model directory runs/x"),
    ``instead`` what the user may use instead."""
    lock = lock_file_for(path)
    try:
        key = os.path.realpath(lock)
    except OSError as err:  # pragma: no cover - realpath rarely fails
        raise LqoError(f"cannot lock {what}: {err}") from None
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
            return WriterLock(key)
        try:
            fd = os.open(key, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise LqoError(f"cannot lock {what}: {err.strerror or err}: {lock}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: another process holds it
            holder = _holder(fd)
            os.close(fd)
            raise BusyError(
                f"{what} is in use by another lqo process{holder}: one lqo process at a time may write it; "
                f"wait for that one to finish, or use {instead}"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {_command()}\n".encode())
        except OSError:
            pass  # the lock holds without its note
        _held[key] = [fd, 1]
        return WriterLock(key)


@contextmanager
def writer_lock(path: str | os.PathLike[str], what: str, instead: str = "another directory") -> Iterator[None]:
    """``acquire`` for the duration of a ``with`` block."""
    held = acquire(path, what, instead)
    try:
        yield
    finally:
        held.release()


def _holder(fd: int) -> str:
    """`` (pid N: lqo ...)`` from the lock file's note, or "" if there is none."""
    try:
        note = os.pread(fd, 300, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    pid, _, command = note.partition(" ")
    if not pid.isdigit():
        return ""
    return f" (pid {pid}" + (f": {command[:120]}" if command else "") + ")"


def _command() -> str:
    argv = list(sys.argv) or ["python"]
    name = os.path.basename(argv[0])
    if name in ("lqo", "__main__.py") or not name:
        name = "lqo"
    elif name == "-c":
        name = "python -c"
    return " ".join([name] + argv[1:])[:200]
