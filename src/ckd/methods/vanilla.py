"""No distillation: the task's own loss alone (label cross-entropy; a detector's losses), which
is how a teacher, or a baseline without distillation, is trained."""

from __future__ import annotations

import torch

from ckd.methods.base import METHODS, Batch, Method, MethodOptions


@METHODS.register("vanilla")
class Vanilla(Method[MethodOptions]):
    Options = MethodOptions
    needs_teacher = False
    tasks = ("classification", "detection")
    description = "the task's own loss only (label CE; a detector's losses): teachers, baselines"
    paper = "-"

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        return {}
