"""Distillation methods, one per file, registered by name in :data:`METHODS`."""

from ckd.methods import (  # noqa: F401  (registration)
    at,
    ckd,
    crd,
    dkd,
    fitnet,
    kd,
    kdsvd,
    nst,
    ofd,
    pkt,
    reviewkd,
    rkd,
    sp,
    vanilla,
    vid,
)
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
