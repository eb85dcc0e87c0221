"""Parameter counting and checkpoint loading (ours and the RepDistiller / mdistiller teachers).

Accepted sources: a path (loaded with ``torch.load(..., weights_only=True)``), or an
in-memory mapping. The mapping may be a raw state dict, ``{"model": sd, ...}`` (reference
teachers and our own checkpoints) or ``{"state_dict": sd, ...}``; a leading ``"module."``
(DataParallel / DDP) prefix on the keys is stripped.

mdistiller's ``cifar_teachers.tar`` is a plain tar archive: extract it and pass one of its
``<name>_vanilla/ckpt_epoch_240.pth`` files (a ``{"model": state_dict, ...}`` dict).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ckd.errors import CheckpointError, cut
from ckd.integrity import CHECKSUM_KEY, payload_sha256

_WRAPPER_KEYS = ("model", "state_dict")
_PREFIX = "module."
_SHOW = 3  # keys named per kind of mismatch


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as BN running stats are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _numpy_scalar_globals() -> list[Any]:
    """The globals a pickled NumPy scalar needs (e.g. a ``best_acc`` saved as ``np.float64``):
    plain data, safe to allow alongside ``weights_only=True``."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core  # NumPy 2 renamed np.core
    scalar = core.multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return [scalar, np.dtype, *dtypes]


def read_checkpoint(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """The dict in a checkpoint file, loaded with ``weights_only=True`` (NumPy scalars
    allowed). When it carries a checksum of its payload (:func:`ckd.integrity.payload_sha256`,
    written by :func:`ckd.engine.checkpoint.save_atomic`), the checksum is verified and the
    payload returned without it.

    Raises:
        CheckpointError: one line naming the file: unreadable, empty, truncated, corrupt, not a
            dict, refused by ``weights_only``, or contents that fail their checksum.
    """
    path = os.fspath(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            with torch.serialization.safe_globals(_numpy_scalar_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is long; keep the line that names the offending global / opcode
        tail = str(err).split("WeightsUnpickler error:", 1)[-1]
        reason = next((ln.strip() for ln in tail.splitlines() if ln.strip()), "")
        reason = reason.split(". ", 1)[0] or type(err).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint (weights_only=True refuses it: {cut(reason)})"
        ) from None
    except Exception as err:  # noqa: BLE001 - whatever a damaged file makes torch raise
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            reason = "an empty file"
        else:
            first = next((ln for ln in str(err).splitlines() if ln.strip()), "")
            first = first.strip().split(". ", 1)[0]
            if len(first) < 12:  # e.g. KeyError's "101": name the error too
                first = f"{type(err).__name__} {first}".strip()
            reason = f"truncated or corrupt: {cut(first, 120)}"
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(obj).__name__})")
    if CHECKSUM_KEY not in obj:
        return obj
    body = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
    if payload_sha256(body) != obj[CHECKSUM_KEY]:
        raise CheckpointError(
            f"{path}: its contents do not match the checksum saved with them (the file is corrupt)"
        )
    return body


def _read(source: str | os.PathLike[str] | Mapping[str, Any]) -> Mapping[str, Any]:
    return source if isinstance(source, Mapping) else read_checkpoint(source)


def extract_state_dict(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """Unwrap ``{"model": sd}`` / ``{"state_dict": sd}`` and strip a ``module.`` prefix."""
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        raise ValueError(f"no tensors found; top-level keys: {', '.join(map(str, obj))[:200]}")
    if all(k.startswith(_PREFIX) for k in sd):
        sd = {k[len(_PREFIX) :]: v for k, v in sd.items()}
    return sd


def _names(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def check_state_dict(model: nn.Module, sd: Mapping[str, Tensor], strict: bool = True) -> None:
    """Raise ValueError (one line) on shape mismatches, and with ``strict`` also on
    missing / unexpected keys."""
    own = model.state_dict()
    problems = []
    shape = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if shape:
        k = shape[0]
        detail = f"{k} checkpoint {list(sd[k].shape)} vs model {list(own[k].shape)}"
        more = f" (+{len(shape) - 1} more)" if len(shape) > 1 else ""
        problems.append(f"shape mismatch: {detail}{more}")
    if strict:
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        if missing:
            problems.append(f"missing keys: {_names(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_names(unexpected)}")
    if problems:
        raise ValueError(f"state dict does not fit {type(model).__name__}: " + "; ".join(problems))


def load_weights(
    model: nn.Module, source: str | os.PathLike[str] | Mapping[str, Any], strict: bool = True
) -> nn.Module:
    """Load ``source`` into ``model`` (in place) and return the model.

    Raises ValueError naming the first few missing / unexpected / shape-mismatched keys.
    """
    sd = extract_state_dict(_read(source))
    check_state_dict(model, sd, strict=strict)
    model.load_state_dict(sd, strict=strict)
    return model
