"""Distillation methods, one per file, registered by name in :data:`METHODS`."""

from ckd.methods import ckd, dkd, kd, vanilla  # noqa: F401  (registration)
from ckd.methods.base import (
    METHODS,
    Batch,
    Distiller,
    Method,
    MethodOptions,
    Outputs,
    Setup,
    Shapes,
)


def method_names() -> list[str]:
    return METHODS.names()


__all__ = [
    "METHODS",
    "Batch",
    "Distiller",
    "Method",
    "MethodOptions",
    "Outputs",
    "Setup",
    "Shapes",
    "method_names",
]
