"""Hinton KD: ``w_ce * CE + w_kd * kd_loss``."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ckd.losses import kd_loss
from ckd.methods.base import METHODS, Distiller, MethodOptions


@dataclasses.dataclass
class KDOptions(MethodOptions):
    w_ce: float = 0.1
    w_kd: float = 0.9
    temperature: float = 4.0

    def validate(self) -> None:
        super().validate()
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0; got {self.temperature}")


@METHODS.register("kd")
class KD(Distiller):
    Options = KDOptions
    description = "KL between temperature-softened teacher and student probabilities"
    paper = "Hinton et al., Distilling the Knowledge in a Neural Network, 2015"

    def losses(
        self, logits: torch.Tensor, images: torch.Tensor, targets: torch.Tensor, **ctx: Any
    ) -> dict[str, torch.Tensor]:
        o = self.options
        teacher = self.teacher_logits(images)
        return {
            "ce": self.ce(logits, targets),
            "kd": o.w_kd * kd_loss(logits, teacher, o.temperature),
        }
