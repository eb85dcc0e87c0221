"""ckd: Contrastive Knowledge Distillation (Zhu et al., IEEE TIP 2025) and its baselines.

Library use::

    from ckd import ckd_loss
    loss = ce + 10.0 * ckd_loss(student_logits, teacher_logits.detach(), temperature=1.0)

    import ckd
    run = ckd.train("fashion_mnist/ckd", overrides=["optim.epochs=2"])  # see ckd.api
    run.result, run.student, run.out_dir, run.config

The names are imported on first use, so ``import ckd`` (and ``ckd --help``) does not load
torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ckd.version import __version__

#: Public name -> the module that defines it (imported when the name is first used).
_LAZY = {
    "ckd_loss": "ckd.losses",
    "dkd_loss": "ckd.losses",
    "kd_loss": "ckd.losses",
    "Run": "ckd.api",
    "build_cache": "ckd.api",
    "evaluate": "ckd.api",
    "load_student": "ckd.api",
    "train": "ckd.api",
}
__all__ = [
    "Run",
    "build_cache",
    "ckd_loss",
    "dkd_loss",
    "evaluate",
    "kd_loss",
    "load_student",
    "train",
    "__version__",
]

if TYPE_CHECKING:
    from ckd.api import Run, build_cache, evaluate, load_student, train
    from ckd.losses import ckd_loss, dkd_loss, kd_loss


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ckd' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
