"""Fault injection for the tests: ``CKD_FAULT=POINT[@N]`` kills this process with SIGKILL
(as ``kill -9`` or a power cut would) the N-th time (default: the first) it passes ``POINT``;
``CKD_FAULT_SIGNAL=TERM`` (or ``INT``) sends that signal instead. Unset, it does nothing.

Points: ``before:FILE``, ``inside:FILE`` (the temporary file written, not yet renamed) and
``after:FILE`` around every atomic write of a run folder (``last.pt``, ``best.pt``,
``config.yaml``, ``result.json``, ``metrics.jsonl`` when a resume rewrites it);
``before:row`` / ``after:row`` around a metrics row and ``torn:row`` (half a row, then the
kill); ``step`` after every optimisation step; ``inside:cache-build`` after each epoch of a
teacher-cache build.
"""

from __future__ import annotations

import os
import signal

_passed: dict[str, int] = {}


def due(point: str) -> bool:
    """Whether the fault asked for in ``CKD_FAULT`` strikes now, at ``point``."""
    spec = os.environ.get("CKD_FAULT")
    if not spec:
        return False
    name, _, nth = spec.partition("@")
    if name != point:
        return False
    _passed[point] = _passed.get(point, 0) + 1
    return _passed[point] == int(nth or 1)


def strike() -> None:
    """Send this process the fault's signal (SIGKILL unless ``CKD_FAULT_SIGNAL`` names one)."""
    name = os.environ.get("CKD_FAULT_SIGNAL", "KILL").upper().removeprefix("SIG")
    os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


def point(name: str) -> None:
    """A place where the tests may kill the process (see the module's docstring)."""
    if due(name):
        strike()
