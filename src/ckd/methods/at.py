"""Attention transfer: ``w_ce * CE + w_at * at_loss`` over every stage but the stem."""

from __future__ import annotations

import dataclasses

import torch

from ckd.losses import at_loss
from ckd.losses.feature import paired_stages
from ckd.methods.base import METHODS, Batch, Method, MethodOptions


@dataclasses.dataclass
class ATOptions(MethodOptions):
    # Defaults: mdistiller mdistiller/engine/cfg.py (AT.P 2, LOSS.CE_WEIGHT 1.0, FEAT_WEIGHT 1000)
    # = RepDistiller scripts/run_cifar_distill.sh (--distill attention -a 0 -b 1000). Stages:
    # the reference's feats[1:] (all but the stem), aligned from the deepest stage.
    w_ce: float = 1.0
    w_at: float = 1000.0
    p: float = 2.0

    def validate(self) -> None:
        super().validate()
        self.require(self.p > 0, "p", "> 0")


@METHODS.register("at")
class AT(Method[ATOptions]):
    Options = ATOptions
    needs_features = True
    description = "matches normalised spatial attention maps (channel mean of |f|^p) per stage"
    paper = (
        "Zagoruyko & Komodakis, Paying More Attention to Attention: Improving the Performance "
        "of Convolutional Neural Networks via Attention Transfer, ICLR 2017"
    )

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        s, t = paired_stages(b.student.feats, b.teacher.feats)
        return {"at": self.options.w_at * at_loss(s, t, self.options.p)}
