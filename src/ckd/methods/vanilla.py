"""CE only: how a teacher (or a student baseline without distillation) is trained."""

from __future__ import annotations

import torch

from ckd.methods.base import METHODS, Batch, Method, MethodOptions


@METHODS.register("vanilla")
class Vanilla(Method):
    Options = MethodOptions
    needs_teacher = False
    description = "cross-entropy on the labels only (teachers, CE-only baselines)"
    paper = "-"

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        return {"ce": self.ce(b)}
