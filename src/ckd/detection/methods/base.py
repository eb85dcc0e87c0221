"""The detection method contract: what a method sees of one training batch, and its registry.

As for classification (:mod:`ckd.methods.base`), a method is a pure loss (from
:mod:`ckd.losses`) plus a thin module turning a :class:`DetBatch` into a dict of named, already
weighted loss terms; the trainer sums them with the detector's own losses and never knows which
method runs. Methods are registered by name in :data:`DET_METHODS` and combine with ``also``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from ckd.methods.base import Options
from ckd.registry import Registry


@dataclasses.dataclass
class DetMethodOptions(Options):
    """Options common to every detection method (none); each method subclasses this."""


@dataclasses.dataclass(frozen=True)
class DetSetup:
    """What a method may know when it is built."""

    num_classes: int  # background included
    levels: tuple[str, ...]  # FPN level names, shallow to deep
    student_channels: int  # FPN channels of the student
    teacher_channels: int | None = None


class DetBatch:
    """One training batch as every detection method sees it.

    Student side (with gradient), captured from the student's own forward pass:
    ``student_features`` (FPN levels ``{name: [N, C_s, H_l, W_l]}``, N images),
    ``proposals`` (the RoIs sampled for the box head, per image ``[R_i, 4]`` in the transformed
    image's pixels), ``roi_labels`` (``[B]`` int64, B = sum R_i, 0 = background) and
    ``student_roi_logits`` (``[B, K]``). Teacher side, computed on first access without
    gradient: ``teacher_features`` and ``teacher_roi_logits`` (``[B, K]``, the teacher's box
    head on the same proposals). ``iteration`` is the 0-based optimisation step.
    """

    def __init__(
        self,
        student_features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        roi_labels: torch.Tensor,
        student_roi_logits: torch.Tensor,
        teacher: Callable[[], tuple[dict[str, torch.Tensor], torch.Tensor]] | None,
        iteration: int = 0,
    ) -> None:
        self.student_features, self.proposals = student_features, proposals
        self.roi_labels, self.student_roi_logits = roi_labels, student_roi_logits
        self.iteration = iteration
        self._teacher_fn = teacher
        self._teacher: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None

    def _run_teacher(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self._teacher is None:
            if self._teacher_fn is None:
                raise RuntimeError("this batch has no teacher")
            self._teacher = self._teacher_fn()
        return self._teacher

    @property
    def teacher_features(self) -> dict[str, torch.Tensor]:
        return self._run_teacher()[0]

    @property
    def teacher_roi_logits(self) -> torch.Tensor:
        return self._run_teacher()[1]


class DetMethod(nn.Module):
    """A detection distillation method: ``forward(batch) -> {term name: weighted scalar}``."""

    Options: ClassVar[type[DetMethodOptions]] = DetMethodOptions
    needs_teacher: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False  # classification's Distiller reads these two
    needs_preact: ClassVar[bool] = False
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""

    def __init__(self, options: Any, setup: DetSetup) -> None:
        super().__init__()
        self.options = options
        self.setup = setup

    def attach(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Called once by the distiller (see :meth:`ckd.methods.Method.attach`)."""

    def forward(self, b: DetBatch) -> dict[str, torch.Tensor]:
        raise NotImplementedError


DET_METHODS: Registry[type[DetMethod]] = Registry("detection method")
