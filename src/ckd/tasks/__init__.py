"""The tasks the engine trains, one registry visible at a glance.

A task is what the engine asks of a kind of problem: its config schema (``Config``: the data
and model sections under the shared ``method``/``optim``/``run``), and, built from a config and
a :class:`~ckd.engine.runtime.Runtime`, its distiller (networks, methods and the
:class:`~ckd.methods.base.View` that shows a batch to the methods), its training loader
(:class:`~ckd.engine.loaders.TrainLoader`), its evaluation and the metric that picks
``best.pt``. The trainer knows no task by name.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ckd.config import BaseConfig
from ckd.registry import Registry


class Task:
    """Base of the tasks (see the module docstring); set by the subclass's ``__init__``."""

    Config: ClassVar[type[BaseConfig]]
    score: ClassVar[str]  # the evaluation metric that picks best.pt (higher is better)

    cfg: Any
    runtime: Any
    distiller: Any
    loader: Any  # a TrainLoader
    memory: Any = None  # the training split in memory (MemoryData), when it is held there

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Metrics of ``model`` (in eval mode) on the task's test split, every process the
        same."""
        raise NotImplementedError

    def train_stats(self, logits: torch.Tensor, targets: Any) -> dict[str, torch.Tensor]:
        """Per-micro-batch statistics logged beside the loss terms (e.g. training accuracy)."""
        return {}

    def describe(self) -> str:
        """The run's student, method and data in one line."""
        raise NotImplementedError

    def format_metrics(self, metrics: dict[str, float]) -> str:
        raise NotImplementedError

    def model_names(self) -> tuple[str, str | None]:
        """The student's and the teacher's names (for results)."""
        raise NotImplementedError


TASKS: Registry[type[Task]] = Registry("task")

from ckd.tasks import classification, detection  # noqa: E402, F401  (registration)
