"""One process per folder: an OS lock (``flock``) on ``FOLDER/.ckd.lock``, held for the life of
the process (or of the run). The OS drops it when the process ends, however it ends (``kill -9``
included), so a stale lock never blocks anyone; the file records who holds it (pid, host, start
time), which the refused process names. On systems without ``fcntl`` there is no lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from ckd.errors import RunDirError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # no module on Windows

LOCK_NAME = ".ckd.lock"


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

    def release(self, remove: bool = False) -> None:
        """Let go of the lock (``remove``: delete the lock file first, still holding it)."""
        if self.fd is None:
            return
        if remove:
            with contextlib.suppress(OSError):
                self.path.unlink()
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
