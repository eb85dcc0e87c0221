"""Decoupled KD: ``w_ce * CE + warmup(epoch) * dkd_loss``."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ckd.losses import dkd_loss
from ckd.methods.base import METHODS, Distiller, MethodOptions


@dataclasses.dataclass
class DKDOptions(MethodOptions):
    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup_epochs: int = 20  # the DKD term grows linearly over this many epochs (0: off)

    def validate(self) -> None:
        super().validate()
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0; got {self.temperature}")
        if self.warmup_epochs < 0:
            raise ValueError(f"method.warmup_epochs must be >= 0; got {self.warmup_epochs}")


@METHODS.register("dkd")
class DKD(Distiller):
    Options = DKDOptions
    description = "KD decoupled into target-class (TCKD) and non-target-class (NCKD) parts"
    paper = "Zhao et al., Decoupled Knowledge Distillation, CVPR 2022"

    def warmup_factor(self, epoch: int) -> float:
        """``min((epoch + 1) / warmup_epochs, 1)`` for the 0-based epoch, as released."""
        w = self.options.warmup_epochs
        return 1.0 if w == 0 else min((epoch + 1) / w, 1.0)

    def losses(
        self, logits: torch.Tensor, images: torch.Tensor, targets: torch.Tensor, **ctx: Any
    ) -> dict[str, torch.Tensor]:
        o = self.options
        teacher = self.teacher_logits(images)
        dkd = dkd_loss(logits, teacher, targets, o.alpha, o.beta, o.temperature)
        return {
            "ce": self.ce(logits, targets),
            "dkd": self.warmup_factor(ctx.get("epoch", 0)) * dkd,
        }
