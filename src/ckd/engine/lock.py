"""One process per folder: an OS lock (``flock``) on ``FOLDER/.ckd.lock``, held for the life of
the process (or of the run). The OS drops it when the process ends, however it ends (``kill -9``
included), so a stale lock never blocks anyone; the file records who holds it (pid, host, start
time), which the refused process names. On systems without ``fcntl`` there is no lock.

A ``flock`` belongs to the open file, which a forked child shares (DataLoader workers are
forked): the lock would outlive a killed process for as long as its children live (seconds,
until they notice). So a child closes its copy of every held lock's descriptor as soon as it is
forked (``os.register_at_fork``), before it runs anything else, and the lock dies with the
process that took it. (``O_CLOEXEC`` only helps a child that execs; POSIX record locks, which
children do not inherit, are dropped when the process closes any descriptor of the file and do
not exclude a second holder in the same process.) A child never unlocks: that would release the
parent's lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import weakref
from pathlib import Path

from ckd.errors import RunDirError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # no module on Windows

LOCK_NAME = ".ckd.lock"

#: The locks this process holds (their descriptors are closed in a forked child).
_HELD: weakref.WeakSet[FolderLock] = weakref.WeakSet()


def _forget_in_child() -> None:
    """In a forked child: close the inherited descriptors of the parent's locks (closing, not
    unlocking: the lock stays the parent's, and goes when the parent does)."""
    for lock in list(_HELD):
        if lock.fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
            lock.fd = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


class FolderLock:
    """The lock of ``folder`` (which must exist); ``what`` names the folder in messages."""

    def __init__(self, folder: str | Path, what: str = "run folder") -> None:
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise RunDirError naming the process that holds it."""
        if self.fd is not None or fcntl is None:
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(os.pread(fd, 4096, 0))
                os.close(fd)
                raise RunDirError(
                    f"{self.folder}: in use by another ckd process ({holder}); a {self.what} "
                    "belongs to one process at a time (nothing was written)"
                ) from None
            # the previous holder may have removed the file between our open and our lock
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.fd = fd
        _HELD.add(self)

    def release(self, remove: bool = False) -> None:
        """Let go of the lock (``remove``: delete the lock file first, still holding it)."""
        if self.fd is None:
            return
        if remove:
            with contextlib.suppress(OSError):
                self.path.unlink()
        _HELD.discard(self)
        os.close(self.fd)  # closing the last descriptor drops the flock
        self.fd = None

    def __del__(self) -> None:
        self.release()

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(raw: bytes) -> str:
    """``pid 123 on host h, since 2026-01-02 03:04:05`` from a lock file's content."""
    try:
        info = json.loads(raw.decode())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {int(info['pid'])} on host {str(info['host'])[:100]}, since {since}"
    except (ValueError, KeyError, TypeError, OverflowError, OSError):
        return "details unreadable"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
