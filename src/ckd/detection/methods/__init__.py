"""Detection distillation methods, one per file, registered by name in :data:`DET_METHODS`:
``vanilla`` (no teacher), ``ckd``, ``kd`` and ``dkd`` on the RoI logits, ``reviewkd`` on the FPN
features (combine with ``also``)."""

from ckd.detection.methods import ckd, dkd, kd, reviewkd, vanilla  # noqa: F401  (registration)
from ckd.detection.methods.base import (
    DET_METHODS,
    DetBatch,
    DetMethod,
    DetMethodOptions,
    DetSetup,
)

__all__ = ["DET_METHODS", "DetBatch", "DetMethod", "DetMethodOptions", "DetSetup"]
