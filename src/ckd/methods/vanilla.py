"""CE only: how a teacher (or a student baseline without distillation) is trained."""

from __future__ import annotations

from typing import Any

import torch

from ckd.methods.base import METHODS, Distiller, MethodOptions


@METHODS.register("vanilla")
class Vanilla(Distiller):
    Options = MethodOptions
    needs_teacher = False
    description = "cross-entropy on the labels only (teachers, CE-only baselines)"
    paper = "-"

    def losses(
        self, logits: torch.Tensor, images: torch.Tensor, targets: torch.Tensor, **ctx: Any
    ) -> dict[str, torch.Tensor]:
        return {"ce": self.ce(logits, targets)}
