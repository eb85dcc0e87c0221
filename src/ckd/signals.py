"""SIGINT and SIGTERM, handled alike.

Outside a training loop, :func:`terminate_as_interrupt` makes SIGTERM (what Slurm, Kubernetes
and ``kill`` send) raise :class:`~ckd.errors.Interrupted` wherever the process is, as SIGINT
raises KeyboardInterrupt: the stack unwinds (temporary files go, a run folder this process made
and never used is removed) and the command line prints one line, ``stopped by SIGTERM``; only
code that knows what is left (the trainer: a run to continue, or nothing) adds advice. Inside it,
:class:`StopRequests` only records the signal, so the loop stops at the next step boundary and
leaves a resumable checkpoint; a second signal stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from ckd.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def name(signum: int) -> str:
    return signal.Signals(signum).name


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum, f"stopped by {name(signum)}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`~ckd.errors.Interrupted` while the block runs."""
    if not _in_main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


class StopRequests:
    """While active, SIGINT and SIGTERM set :attr:`signum` (the first one received) instead of
    interrupting; a second one raises :class:`~ckd.errors.Interrupted` at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._before: dict[int, Any] = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:
            _raise(signum, frame)
        self.signum = signum

    def __enter__(self) -> StopRequests:
        if _in_main_thread():
            self._before = {s: signal.signal(s, self._record) for s in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._before.items():
            signal.signal(s, handler)
        self._before = {}
