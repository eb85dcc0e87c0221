"""CKD on the RoI classification logits: ``w_ckd * ckd_loss(student, teacher)`` over the B RoIs
sampled for the student's box head (each RoI one sample of the InfoNCE; the other RoIs of the
batch, all images together, its negatives). The released detection recipe: w 0.1, tau 1,
together with a ReviewKD feature loss (``also: [{name: reviewkd}]``)."""

from __future__ import annotations

import dataclasses

import torch

from ckd.detection.methods.base import DET_METHODS, DetBatch, DetMethod, DetMethodOptions
from ckd.losses import NEGATIVES, ckd_loss


@dataclasses.dataclass
class DetCKDOptions(DetMethodOptions):
    w_ckd: float = 0.1
    temperature: float = 1.0
    negatives: str = "cross"  # "cross" (released code) or "student" (paper text)

    def validate(self) -> None:
        super().validate()
        self.require(self.temperature > 0, "temperature", "> 0")
        self.require(self.negatives in NEGATIVES, "negatives", f"one of {', '.join(NEGATIVES)}")


@DET_METHODS.register("ckd")
class DetCKD(DetMethod):
    Options = DetCKDOptions
    description = "CKD (sample-wise InfoNCE) between teacher and student RoI logits"
    paper = (
        "Zhu et al., CKD: Contrastive Knowledge Distillation from A Sample-wise Perspective, "
        "IEEE TIP 2025"
    )

    def forward(self, b: DetBatch) -> dict[str, torch.Tensor]:
        o = self.options
        loss = ckd_loss(b.student_roi_logits, b.teacher_roi_logits, o.temperature, o.negatives)
        return {"roi_ckd": o.w_ckd * loss}
