"""Decoupled KD: ``w_ce * task loss + warmup * dkd_loss``, optionally on standardised logits.
On detection the target class of a RoI is its assigned label (0: background)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from ckd.losses import dkd_loss, standardize_logits
from ckd.methods.base import METHODS, Batch, Method, MethodOptions


@dataclasses.dataclass
class DKDOptions(MethodOptions):
    # detection: the reference's detection code (the CKD code's detection/model/config.py,
    # KD.DKD: alpha 1.0, beta 0.25, T 1.0, which its DKD/*.yaml and ReviewDKD/*.yaml recipes
    # keep; its rcnn_dkd_loss adds the term with weight 1 and no warm-up)
    TASK_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "detection": {"beta": 0.25, "temperature": 1.0, "warmup_epochs": 0, "warmup_iters": 0}
    }

    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    # the DKD term grows linearly over this many epochs, or iterations (at most one set; 0: off)
    warmup_epochs: int = 20
    warmup_iters: int = 0
    # z-score teacher and student logits per sample first (Sun et al., CVPR 2024); the authors
    # pair it with temperature 2 (see ckd.losses.standardize), not this default of 4
    logit_standardize: bool = False

    def validate(self) -> None:
        super().validate()
        self.require(self.alpha >= 0, "alpha", ">= 0")
        self.require(self.beta >= 0, "beta", ">= 0")
        self.require(self.temperature > 0, "temperature", "> 0")
        self.require(self.warmup_epochs >= 0, "warmup_epochs", ">= 0")
        self.require(self.warmup_iters >= 0, "warmup_iters", ">= 0")
        self.require(
            not (self.warmup_epochs and self.warmup_iters), "warmup_iters", "0 with warmup_epochs"
        )


@METHODS.register("dkd")
class DKD(Method[DKDOptions]):
    Options = DKDOptions
    tasks = ("classification", "detection")
    description = "KD decoupled into target-class (TCKD) and non-target-class (NCKD) parts"
    paper = "Zhao et al., Decoupled Knowledge Distillation, CVPR 2022"

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        s, t = b.student.logits, b.teacher.logits
        if o.logit_standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        dkd = dkd_loss(s, t, b.targets, o.alpha, o.beta, o.temperature)
        return {"dkd": b.warmup(o.warmup_epochs, o.warmup_iters) * dkd}
