"""The CIFAR model zoo of the knowledge-distillation literature (RepDistiller / mdistiller), one
architecture family per module.

A model is registered in one place: its module's ``@MODELS.register("name")``. Every module of
this package is imported here (found by listing the package), so a new architecture file
needs no other edit; ``parameters.json`` (the parameter counts ``ckd list models`` shows
without importing torch) is generated from the registry by ``python -m ckd.listing --write``,
and a test fails, naming that command, when it differs from the registry.
"""

from __future__ import annotations

import importlib
import pkgutil

from ckd.models.zoo.common import MODELS, ZooModel

#: The architecture modules found in this package, imported (which registers their models).
MODULES = tuple(
    importlib.import_module(f"{__name__}.{m.name}")
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
    if m.name != "common"
)

__all__ = ["MODELS", "MODULES", "ZooModel"]
