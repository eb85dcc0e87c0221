"""Checksums that catch corrupted files whose bytes still decode: of a checkpoint's payload
(:func:`payload_sha256`) and of a block of a memory-mapped array (:func:`block_sha256`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

#: The key of a checkpoint dict that holds :func:`payload_sha256` of the rest of it.
CHECKSUM_KEY = "payload_sha256"


def payload_sha256(obj: Any) -> str:
    """sha256 of a checkpoint payload's content: every tensor's dtype, shape and bytes and every
    plain value, in order. Independent of the device a tensor was saved from and of how
    ``torch.save`` laid the file out, so it can be recomputed from what ``torch.load`` gives
    back."""
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def _feed(digest: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        digest.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            flat = t.cpu().contiguous().reshape(-1)
            digest.update(flat.view(torch.uint8).numpy())
    elif isinstance(obj, Mapping):
        digest.update(f"D{len(obj)}|".encode())
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
    elif isinstance(obj, list | tuple):  # torch.Size too; a list and a tuple hash alike
        digest.update(f"L{len(obj)}|".encode())
        for value in obj:
            _feed(digest, value)
    elif isinstance(obj, set | frozenset):
        digest.update(f"S{len(obj)}|".encode())
        for text in sorted(repr(v) for v in obj):
            digest.update(f"{len(text)}:{text}".encode("utf-8", "surrogatepass"))
    else:  # None, bool, int, float, str, bytes, torch.dtype, torch.device: a stable repr
        text = f"{type(obj).__name__}:{obj!r}"
        digest.update(f"V{len(text)}:{text}".encode("utf-8", "surrogatepass"))


def block_sha256(block: np.ndarray) -> str:
    """sha256 of an array block's bytes (e.g. one epoch of a memory-mapped cache array)."""
    return hashlib.sha256(np.ascontiguousarray(block).data).hexdigest()
