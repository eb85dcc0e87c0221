"""What the engine trains: the :class:`Task` contract and the :data:`TASKS` registry.

A task is what the engine asks of a kind of problem. Built from a config and a
:class:`~ckd.engine.runtime.Runtime`, it gives the distiller (networks, methods and the
:class:`~ckd.methods.views.View` that shows a batch to the methods), its training loader
(:class:`~ckd.engine.loaders.TrainLoader`), its evaluation and the metric that picks
``best.pt``; its class names the config schema of its runs (``Config``). The task packages
(:mod:`ckd.tasks`) register themselves here with :func:`register_task`, which also registers
their schema with the config loader (:data:`ckd.config.TASK_CONFIGS`), so that a task's name
is written once. The trainer knows no task by name: it asks this registry, and a task's
capabilities (:attr:`Task.fixed_shapes`) instead of its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ckd.config import TASK_CONFIGS, BaseConfig
from ckd.data.fast import MemoryData
from ckd.engine.loaders import TrainLoader
from ckd.engine.runtime import Runtime
from ckd.methods.distiller import Distiller
from ckd.registry import Registry


class Task:
    """Base of the tasks (see the module docstring); a subclass's ``__init__(cfg, runtime)``
    sets :attr:`cfg`, :attr:`runtime`, :attr:`distiller`, :attr:`loader` (and :attr:`memory`
    when it holds the training split in memory)."""

    Config: ClassVar[type[BaseConfig]]
    #: The evaluation metric that picks best.pt (higher is better).
    score: ClassVar[str]
    #: Whether every training batch has the same shapes (images, targets, rows), so that the
    #: step can be captured once as a CUDA graph (``run.cuda_graphs``).
    fixed_shapes: ClassVar[bool] = False

    cfg: BaseConfig
    runtime: Runtime
    distiller: Distiller
    loader: TrainLoader
    memory: MemoryData | None = None  # the training split in memory, when it is held there

    def __init__(self, cfg: BaseConfig, runtime: Runtime) -> None:
        raise NotImplementedError

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
        """The evaluation's metrics in one short line (``top-1 71.20  top-5 90.10``)."""
        raise NotImplementedError

    def model_names(self) -> tuple[str, str | None]:
        """The student's and the teacher's names (for results)."""
        raise NotImplementedError

    def checkpoint_extras(self) -> dict[str, Any]:
        """Entries a checkpoint carries beside the run's state (e.g. the dataset's facts, so
        that the student can be rebuilt without the data)."""
        return {}


TASKS: Registry[type[Task]] = Registry("task")

T = TypeVar("T", bound=type[Task])


def register_task(name: str) -> Callable[[T], T]:
    """Class decorator: register a :class:`Task` as ``name`` here, and its ``Config`` schema
    with the config loader, under the same name."""

    def deco(cls: T) -> T:
        TASK_CONFIGS.register(name)(cls.Config)
        TASKS.register(name)(cls)
        return cls

    return deco
