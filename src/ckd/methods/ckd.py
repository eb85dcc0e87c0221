"""CKD: ``w_ce * CE + w_ckd * ckd_loss`` (no KL term, no warm-up)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ckd.losses import NEGATIVES, ckd_loss
from ckd.methods.base import METHODS, Distiller, MethodOptions


@dataclasses.dataclass
class CKDOptions(MethodOptions):
    w_ce: float = 1.0
    w_ckd: float = 10.0
    temperature: float = 1.0
    negatives: str = "cross"  # "cross" (released code) or "student" (paper text)

    def validate(self) -> None:
        super().validate()
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0; got {self.temperature}")
        if self.negatives not in NEGATIVES:
            raise ValueError(
                f"method.negatives must be one of {', '.join(NEGATIVES)}; got {self.negatives!r}"
            )


@METHODS.register("ckd")
class CKD(Distiller):
    Options = CKDOptions
    description = "sample-wise InfoNCE between L2-normalised teacher and student logits of a batch"
    paper = (
        "Zhu et al., CKD: Contrastive Knowledge Distillation from A Sample-wise Perspective, "
        "IEEE TIP 2025"
    )

    def losses(
        self, logits: torch.Tensor, images: torch.Tensor, targets: torch.Tensor, **ctx: Any
    ) -> dict[str, torch.Tensor]:
        o = self.options
        teacher = self.teacher_logits(images)
        return {
            "ce": self.ce(logits, targets),
            "ckd": o.w_ckd * ckd_loss(logits, teacher, o.temperature, o.negatives),
        }
