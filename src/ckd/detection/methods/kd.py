"""KD on the RoI classification logits: ``w_kd * kd_loss(student, teacher, T)`` over the B RoIs
sampled for the student's box head (background included as a class)."""

from __future__ import annotations

import dataclasses

import torch

from ckd.detection.methods.base import DET_METHODS, DetBatch, DetMethod, DetMethodOptions
from ckd.losses import kd_loss


@dataclasses.dataclass
class DetKDOptions(DetMethodOptions):
    w_kd: float = 1.0
    temperature: float = 1.0

    def validate(self) -> None:
        super().validate()
        self.require(self.temperature > 0, "temperature", "> 0")


@DET_METHODS.register("kd")
class DetKD(DetMethod):
    Options = DetKDOptions
    description = "KL between softened teacher and student RoI class distributions"
    paper = "Hinton et al., Distilling the Knowledge in a Neural Network, 2015"

    def forward(self, b: DetBatch) -> dict[str, torch.Tensor]:
        o = self.options
        return {
            "roi_kd": o.w_kd * kd_loss(b.student_roi_logits, b.teacher_roi_logits, o.temperature)
        }
