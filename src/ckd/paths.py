"""Paths a user gives a command, checked before anything is read or written.

- :func:`output_path`: where a command writes a new file or folder of its own (``ckd export
  --out``, ``ckd make-folder --out``, ``ckd cache build --out``). A path with no name of its own
  (empty, ``/``) and the current folder or a folder above it are refused: writing there would
  replace the folder the user is working in.
- :func:`input_file_problem`: why a file a setting names (a checkpoint) cannot be read, as the
  rest of a one-line message (a folder where a file is expected, nothing there).
- :func:`read_small_file`: the bytes of a small regular file (a config), refusing a device,
  a FIFO or a file over a size cap before reading it, so that ``/dev/zero`` or a named pipe
  neither fills the memory nor blocks.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ckd.errors import ConfigError, show


def output_path(value: str | os.PathLike[str], flag: str) -> Path:
    """The absolute path ``value`` names as a command's output (``flag``: how the user gave it,
    e.g. ``--out``), with ``.`` and ``..`` resolved (links are not followed).

    Raises:
        ConfigError: an empty path, the root, or the current folder or one above it.
    """
    text = os.fspath(value)
    if not text.strip():
        raise ConfigError(f"{flag}: an empty path; give the path to write")
    if "\0" in text:
        raise ConfigError(f"{flag}: a path cannot hold a NUL character; got {show(text)}")
    path = Path(os.path.abspath(text))
    if path == path.parent:
        raise ConfigError(f"{flag} {show(text)}: the root folder; give a path to write")
    try:
        here = Path.cwd()
    except OSError:  # the current folder was removed: nothing of it can be hit
        return path
    if path == here or path in here.parents:
        where = "the current folder" if path == here else "a folder above the current one"
        raise ConfigError(
            f"{flag} {show(text)}: {where}, which ckd does not replace; give a new path"
        )
    return path


def input_file_problem(key: str, value: str | os.PathLike[str]) -> str | None:
    """None when ``value`` is a readable file; else the one-line message for setting ``key``
    (``teacher.checkpoint``, ...): a folder (a run folder: its checkpoint is ``last.pt`` in
    it), or nothing at that path."""
    path = Path(value)
    if path.is_file():
        return None
    if path.is_dir():
        hint = (
            f"; its checkpoint is {show(str(path / 'last.pt'))}"
            if (path / "last.pt").is_file()
            else ""
        )
        return f"{key}: {show(str(value))} is a folder, not a checkpoint file{hint}"
    if os.path.lexists(path):
        return f"{key}: {show(str(value))} is not a regular file"
    return f"{key}: file {show(str(value))} does not exist"


#: Largest config file read (configs are a few kB; a larger file is not one).
MAX_CONFIG_BYTES = 1 << 20


def read_small_file(
    path: str | os.PathLike[str], what: str, limit: int = MAX_CONFIG_BYTES
) -> bytes:
    """The bytes of the regular file ``path`` (``what`` names it in messages), at most
    ``limit`` of them.

    Raises:
        ConfigError: not a regular file (a folder, a device such as ``/dev/zero``, a FIFO, a
            socket), larger than ``limit``, or unreadable; checked before a byte is read.
    """
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer (it is refused just after)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ConfigError(f"cannot read {what} {show(str(path))}: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ConfigError(f"{what} {show(str(path))} is {kind}; give a YAML file")
        if info.st_size > limit:
            raise ConfigError(
                f"{what} {show(str(path))} has {info.st_size} bytes; a config has at most {limit}"
            )
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # it grew while read
            raise ConfigError(f"{what} {show(str(path))} has over {limit} bytes")
        return b"".join(chunks)
    except OSError as e:
        raise ConfigError(f"cannot read {what} {show(str(path))}: {e.strerror}") from None
    finally:
        os.close(fd)
