"""DKD on the RoI classification logits: ``warmup * dkd_loss(student, teacher, RoI labels)`` over
the B RoIs sampled for the student's box head, the target class being each RoI's assigned label
(0 for background). Defaults: the reference's detection code (the CKD code's
detection/model/config.py, KD.DKD: alpha 1.0, beta 0.25, T 1.0, which its DKD/*.yaml and
ReviewDKD/*.yaml recipes keep); its ``rcnn_dkd_loss`` adds the term with weight 1 and no warm-up,
so ``warmup_iters`` defaults to 0."""

from __future__ import annotations

import dataclasses

import torch

from ckd.detection.methods.base import (
    DET_METHODS,
    DetBatch,
    DetMethod,
    DetMethodOptions,
)
from ckd.losses import dkd_loss
from ckd.methods.base import linear_warmup


@dataclasses.dataclass
class DetDKDOptions(DetMethodOptions):
    alpha: float = 1.0
    beta: float = 0.25
    temperature: float = 1.0
    warmup_iters: int = 0  # the term grows linearly over this many iterations (0: off)

    def validate(self) -> None:
        self.require(self.alpha >= 0, "alpha", ">= 0")
        self.require(self.beta >= 0, "beta", ">= 0")
        self.require(self.temperature > 0, "temperature", "> 0")
        self.require(self.warmup_iters >= 0, "warmup_iters", ">= 0")


@DET_METHODS.register("dkd")
class DetDKD(DetMethod):
    Options = DetDKDOptions
    description = "DKD (target / non-target KL) on the RoI logits, targets the RoI labels"
    paper = "Zhao et al., Decoupled Knowledge Distillation, CVPR 2022"

    def forward(self, b: DetBatch) -> dict[str, torch.Tensor]:
        o = self.options
        s, t = b.student_roi_logits, b.teacher_roi_logits
        loss = dkd_loss(s, t, b.roi_labels, o.alpha, o.beta, o.temperature)
        return {"roi_dkd": linear_warmup(b.iteration, o.warmup_iters) * loss}
