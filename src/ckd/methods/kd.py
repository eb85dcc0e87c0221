"""Hinton KD: ``w_ce * CE + w_kd * kd_loss``."""

from __future__ import annotations

import dataclasses

import torch

from ckd.losses import kd_loss
from ckd.methods.base import METHODS, Batch, Method, MethodOptions


@dataclasses.dataclass
class KDOptions(MethodOptions):
    w_ce: float = 0.1
    w_kd: float = 0.9
    temperature: float = 4.0

    def validate(self) -> None:
        super().validate()
        self.require(self.temperature > 0, "temperature", "> 0")


@METHODS.register("kd")
class KD(Method):
    Options = KDOptions
    description = "KL between temperature-softened teacher and student probabilities"
    paper = "Hinton et al., Distilling the Knowledge in a Neural Network, 2015"

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        return {
            "ce": self.ce(b),
            "kd": o.w_kd * kd_loss(b.student.logits, b.teacher.logits, o.temperature),
        }
