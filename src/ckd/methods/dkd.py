"""Decoupled KD: ``w_ce * CE + warmup(epoch) * dkd_loss``, optionally on standardised logits."""

from __future__ import annotations

import dataclasses

import torch

from ckd.losses import dkd_loss, standardize_logits
from ckd.methods.base import METHODS, Batch, Method, MethodOptions, linear_warmup


@dataclasses.dataclass
class DKDOptions(MethodOptions):
    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup_epochs: int = 20  # the DKD term grows linearly over this many epochs (0: off)
    # z-score teacher and student logits per sample first (Sun et al., CVPR 2024); the authors
    # pair it with temperature 2 (see ckd.losses.standardize), not this default of 4
    logit_standardize: bool = False

    def validate(self) -> None:
        super().validate()
        self.require(self.alpha >= 0, "alpha", ">= 0")
        self.require(self.beta >= 0, "beta", ">= 0")
        self.require(self.temperature > 0, "temperature", "> 0")
        self.require(self.warmup_epochs >= 0, "warmup_epochs", ">= 0")


@METHODS.register("dkd")
class DKD(Method):
    Options = DKDOptions
    description = "KD decoupled into target-class (TCKD) and non-target-class (NCKD) parts"
    paper = "Zhao et al., Decoupled Knowledge Distillation, CVPR 2022"

    def warmup_factor(self, epoch: int) -> float:
        """``min((epoch + 1) / warmup_epochs, 1)`` for the 0-based epoch, as released."""
        return linear_warmup(epoch, self.options.warmup_epochs)

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        s, t = b.student.logits, b.teacher.logits
        if o.logit_standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        dkd = dkd_loss(s, t, b.targets, o.alpha, o.beta, o.temperature)
        return {"ce": self.ce(b), "dkd": self.warmup_factor(b.epoch) * dkd}
