"""Deterministic, implementation-independent state dicts for zoo equivalence checks.

Every tensor is drawn from a generator seeded by the CRC32 of its key alone, so two
implementations with the same key names and shapes receive identical weights. Uniform draws
(mt19937 + a linear map) keep the values stable across platforms and torch versions.
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import Tensor

NamedShapes = list[tuple[str, tuple[int, ...], str]]


def named_shapes(state: dict[str, Tensor]) -> NamedShapes:
    """``[(key, shape, dtype string), ...]`` of a state dict, in its order."""
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]


_BN_STATS = ("weight", "bias", "running_mean", "running_var")


def encode_layout(shapes: NamedShapes) -> list[str]:
    """Compact text form of a state-dict layout for fixtures.

    ``"key:AxB"`` per float32 tensor (``"key:AxB:int64"`` for other dtypes); the five
    entries of a BatchNorm layer with C channels collapse into ``"prefix:bnC"``.
    """
    out: list[str] = []
    i = 0
    while i < len(shapes):
        key, shape, dtype = shapes[i]
        prefix = key.removesuffix(".weight")
        if key.endswith(".weight") and shapes[i : i + 5] == _bn_layout(prefix, shape):
            out.append(f"{prefix}:bn{shape[0]}")
            i += 5
            continue
        suffix = "" if dtype == "float32" else f":{dtype}"
        out.append(f"{key}:{'x'.join(map(str, shape))}{suffix}")
        i += 1
    return out


def _bn_layout(prefix: str, shape: tuple[int, ...]) -> NamedShapes:
    """The five state entries of a BatchNorm2d with ``shape == (C,)``."""
    if len(shape) != 1:
        return []
    stats = [(f"{prefix}.{leaf}", shape, "float32") for leaf in _BN_STATS]
    return [*stats, (f"{prefix}.num_batches_tracked", (), "int64")]


def decode_layout(entries: list[str]) -> NamedShapes:
    """Inverse of :func:`encode_layout`."""
    out: NamedShapes = []
    for entry in entries:
        key, spec, *rest = entry.split(":")
        if spec.startswith("bn"):
            out += _bn_layout(key, (int(spec[2:]),))
        else:
            shape = tuple(int(d) for d in spec.split("x")) if spec else ()
            out.append((key, shape, rest[0] if rest else "float32"))
    return out


def _uniform(g: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float32) * (high - low) + low


def fill_state(shapes: NamedShapes) -> dict[str, Tensor]:
    """Values from each key name alone, scaled so activations stay moderate in eval mode.

    conv / linear weights: zero-mean uniform with variance 1/fan_in; biases and BN running
    means: U(-0.1, 0.1); BN weights and running variances: U(0.5, 1.5); integer buffers
    (``num_batches_tracked``): 0.
    """
    out: dict[str, Tensor] = {}
    for key, shape, dtype in shapes:
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        leaf = key.rsplit(".", 1)[-1]
        if not dtype.removeprefix("torch.").startswith("float"):
            out[key] = torch.zeros(shape, dtype=getattr(torch, dtype.removeprefix("torch.")))
        elif leaf in ("running_var",) or (leaf == "weight" and len(shape) == 1):
            out[key] = _uniform(g, shape, 0.5, 1.5)
        elif leaf == "weight":
            bound = math.sqrt(3.0 / math.prod(shape[1:]))
            out[key] = _uniform(g, shape, -bound, bound)
        else:  # bias, running_mean
            out[key] = _uniform(g, shape, -0.1, 0.1)
    return out


def fixed_input(in_channels: int = 3, batch: int = 2, size: int = 32) -> Tensor:
    """The probe batch [batch, in_channels, size, size]: N(0, 1) from torch seed 0."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, in_channels, size, size, generator=g)
