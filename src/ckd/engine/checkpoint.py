"""Checkpoints: written atomically, read with ``weights_only=True``.

A training checkpoint is a dict of tensors and plain Python values::

    {"format": "ckd/1", "task": ..., "model": student state dict, "method": method-module
     state dict, "optimizer": ..., "scaler": grad-scaler state, "step": steps done,
     "epoch": completed epochs, "best": best score, "best_step": its step, "teacher": the
     teacher's metrics, "seconds": training time of every process so far, "window": the loss
     sums since the last metrics row, "config": the run's config as a mapping, "rng": RNG states}

``save_atomic`` adds ``"payload_sha256"``, a checksum of everything else, which
``load_checkpoint`` verifies (files without it, older ones or foreign teachers, load as they are).

Its ``model`` entry is a plain student state dict, so a checkpoint of ours can serve as a teacher
exactly like the reference code base's teacher files (``{"model": state_dict}``).
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ckd.faults as faults
from ckd.errors import CheckpointError, ConfigError, show, show_path
from ckd.integrity import CHECKSUM_KEY, payload_sha256
from ckd.models.weights import read_checkpoint

FORMAT = "ckd/1"


def serialize(obj: Any) -> bytes:
    """``obj`` as ``torch.save`` writes it; a dict gets the checksum of its payload
    (``payload_sha256``), which :func:`load_checkpoint` verifies."""
    if isinstance(obj, dict):
        body = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
        obj = {**body, CHECKSUM_KEY: payload_sha256(body)}
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_atomic(obj: Any, path: str | Path) -> None:
    """:func:`serialize` ``obj`` and :func:`write_atomic` it to ``path``."""
    write_atomic(path, lambda: serialize(obj))


def write_atomic(path: str | Path, data: bytes | Callable[[], bytes]) -> None:
    """Write ``data`` (or what it returns) to a temporary file in the same folder, fsync, rename
    it over ``path`` and fsync the folder: a reader never sees a truncated file, and a crash
    (or a power cut) leaves the previous file or the new one, whole. A full disk is an
    ``OSError`` naming ``path``. The temporary, ``.NAME.PID.tmp``, is removed on any error;
    one left by a killed process is removed by the next run in the folder
    (:func:`ckd.engine.rundir.RunFolder`)."""
    path = Path(path)
    faults.point(f"before:{path.name}")
    tmp = temp_name(path)
    try:
        content = data() if callable(data) else data
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"inside:{path.name}")
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except OSError as e:  # e.g. a full disk: say which file could not be written
        if e.errno is None or e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)
    faults.point(f"after:{path.name}")


def temp_name(path: Path) -> Path:
    """The temporary file of :func:`write_atomic` for ``path`` (this process's)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def find_checkpoint(source: str | os.PathLike[str]) -> Path:
    """A checkpoint file, or a run folder's ``last.pt`` (the last epoch: the one reported)."""
    p = Path(source)
    if p.is_dir():
        if (p / "last.pt").is_file():
            return p / "last.pt"
        if (p / "config.yaml").is_file():
            raise ConfigError(
                f"{show_path(p)} is a run folder without last.pt yet (a run writes it at the end "
                "of its first epoch); give a finished run's folder or a checkpoint file"
            )
        raise ConfigError(
            f"{show_path(p)} is a folder without last.pt, not a run folder; give a run folder "
            "or a checkpoint file"
        )
    if os.path.lexists(p) and not p.is_file():
        raise ConfigError(f"{show(str(p))} is not a regular file; give a checkpoint file")
    if not p.is_file():
        raise ConfigError(f"{show(str(p))} does not exist; give a run folder or a checkpoint file")
    return p


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (no unpickling of arbitrary objects), verifying its checksum
    when it has one.

    Raises:
        CheckpointError: one line naming the file (see :func:`ckd.models.read_checkpoint`).
    """
    return dict(read_checkpoint(path))


def load_for_resume(path: Path) -> dict[str, Any]:
    """:func:`load_checkpoint` of a run's ``last.pt``; when it cannot be used, the one-line
    error also says whether the run's ``best.pt`` is intact."""
    try:
        return load_checkpoint(path)
    except CheckpointError as e:
        best, note = path.with_name("best.pt"), ""
        if best.is_file() and best != path:
            try:
                note = f"; {best} (epoch {load_checkpoint(best).get('epoch')}) is intact"
            except CheckpointError:
                note = f"; {best} is unreadable too"
        raise CheckpointError(f"--resume: {e}{note}") from None


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as weights_only-loadable values."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the legacy form of the global generator's state
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
