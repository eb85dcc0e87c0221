"""CKD: ``w_ce * task loss + w_ckd * ckd_loss`` (no KL term, no warm-up), optionally on
standardised logits. On detection the rows are the RoIs sampled for the student's box head (each
RoI one sample of the InfoNCE, the other RoIs of the batch, all images together, its
negatives); the released detection recipe: w_ckd 0.1, tau 1, beside ReviewKD on the FPN."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from ckd.losses import NEGATIVES, ckd_loss, standardize_logits
from ckd.methods.base import METHODS, Batch, Method, MethodOptions


@dataclasses.dataclass
class CKDOptions(MethodOptions):
    TASK_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {"detection": {"w_ckd": 0.1}}

    w_ce: float = 1.0
    w_ckd: float = 10.0
    temperature: float = 1.0
    negatives: str = "cross"  # "cross" (released code) or "student" (paper text)
    # z-score teacher and student logits per sample first (Sun et al., CVPR 2024). As CKD then
    # L2-normalises them, this amounts to centring each logit vector before the cosine.
    logit_standardize: bool = False
    # Distributed classification runs: take the negatives from the global batch (every
    # process's logits, gathered with gradients) instead of each process's own share, as the
    # released recipe does (false). A single process is unaffected.
    global_negatives: bool = False

    def validate(self) -> None:
        super().validate()
        self.require(self.temperature > 0, "temperature", "> 0")
        self.require(self.negatives in NEGATIVES, "negatives", f"one of {', '.join(NEGATIVES)}")


@METHODS.register("ckd")
class CKD(Method[CKDOptions]):
    Options = CKDOptions
    tasks = ("classification", "detection")
    description = "sample-wise InfoNCE between L2-normalised teacher and student logits of a batch"
    paper = (
        "Zhu et al., CKD: Contrastive Knowledge Distillation from A Sample-wise Perspective, "
        "IEEE TIP 2025"
    )

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        s, t = b.student.logits, b.teacher.logits
        if o.logit_standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        if o.global_negatives:
            s, t = b.gather(s), b.gather(t.detach())
        return {"ckd": o.w_ckd * ckd_loss(s, t, o.temperature, o.negatives)}
