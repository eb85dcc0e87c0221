"""Errors the command line turns into one line on stderr and exit code 2, and :func:`show`, the
one place that formats a user's value for such a line."""

from __future__ import annotations

import math
import reprlib
from typing import Any

#: Most characters of one value printed in a message (a longer one is cut, with its length).
SHOW_LIMIT = 200


class ConfigError(ValueError):
    """A bad configuration value: the message names it and says what is allowed."""


class RunDirError(FileExistsError):
    """The run directory already holds a run that this command would overwrite."""


class DataError(ValueError):
    """A dataset file is unreadable, corrupt or not what it should be (the message names it)."""


class CheckpointError(ValueError):
    """A file is not a readable checkpoint, or its contents fail their checksum."""


class Diverged(ArithmeticError):
    """Training produced a non-finite loss, weight or evaluation (the message says where); the
    command line exits with :data:`EXIT_DIVERGED`."""


#: Exit code of a run stopped because it diverged (a user error is 2; a signal, 128 + its number).
EXIT_DIVERGED = 3


class UnknownNameError(KeyError):
    """A name that is not registered (a model, method, dataset, task); its message lists the
    known names (:class:`ckd.registry.Registry`)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the command; ``message`` says what was kept. The command line
    exits with ``128 + signum`` (130, 143), as a shell reports a process a signal ended."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum, self.message = signum, message


#: The errors of bad input: the command line prints their one line and exits with 2 (and a
#: suite's child process, and the Python API raises them as they are).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    RunDirError,
    UnknownNameError,
    DataError,
    CheckpointError,
    FileNotFoundError,  # includes ckd.data.DataNotFoundError
)


def require(ok: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``ok``: the value checks of config sections."""
    if not ok:
        raise ConfigError(message)


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxtuple = 3, 8, 12, 12
_repr.maxset = _repr.maxfrozenset = _repr.maxdeque = _repr.maxarray = 12
_repr.maxstring = _repr.maxother = SHOW_LIMIT
_repr.maxlong = 60


def show(value: Any, limit: int = SHOW_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters, computed without expanding the whole value
    (a YAML alias bomb, a 10**6-element list or a 5,000-digit integer print in microseconds)."""
    if isinstance(value, int) and value.bit_length() > 200:  # str() of a huge int is slow
        text = f"<an integer of about {int((value.bit_length() - 1) * math.log10(2)) + 1} digits>"
    else:
        text = _repr.repr(value)
    return cut(text, limit)


def show_path(path: Any, limit: int = SHOW_LIMIT) -> str:
    """A path for a message: as it is when printable, else quoted with its control characters
    escaped (a file name holding a newline stays on the message's one line), cut to ``limit``."""
    text = str(path)
    return cut(text if text.isprintable() else repr(text), limit)


def cut(text: str, limit: int = SHOW_LIMIT) -> str:
    """``text`` itself when it has at most ``limit`` characters, else its start and its length."""
    return text if len(text) <= limit else f"{text[: limit - 30]}... ({len(text)} characters)"


def one_line(error: BaseException, limit: int = 1000) -> str:
    """The one line a user sees for ``error``: its message's first line, at most ``limit``
    characters. An error re-raised by a DataLoader worker (``Caught X in DataLoader worker
    process N.`` followed by the worker's traceback) gives the worker's own message."""
    text = str(error)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if lines and lines[0].startswith("Caught ") and "Original Traceback" in text:
        last = lines[-1]
        prefix = f"{type(error).__module__}.{type(error).__name__}: "
        lines = [last[len(prefix) :] if last.startswith(prefix) else last.split(": ", 1)[-1]]
    return cut(lines[0].strip() if lines else type(error).__name__, limit)
