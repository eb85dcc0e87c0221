"""Distillation methods, one per file, registered by name in :data:`METHODS`; the contract
they follow (:mod:`~ckd.methods.base`), the views tasks give them (:mod:`~ckd.methods.views`)
and the distiller that runs them (:mod:`~ckd.methods.distiller`)."""

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
from ckd.methods.base import METHODS, Batch, Method, MethodOptions, Outputs, Setup, Shapes
from ckd.methods.distiller import Distiller, build_distiller
from ckd.methods.views import ClassifierView, View, network_shapes, run_network


def method_names() -> list[str]:
    return METHODS.names()


__all__ = [
    "METHODS",
    "Batch",
    "ClassifierView",
    "Distiller",
    "Method",
    "MethodOptions",
    "Outputs",
    "Setup",
    "Shapes",
    "View",
    "build_distiller",
    "method_names",
    "network_shapes",
    "run_network",
]
