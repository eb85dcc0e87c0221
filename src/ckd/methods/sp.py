"""Similarity-preserving KD: ``w_ce * CE + w_sp * sp_loss`` on the deepest stage."""

from __future__ import annotations

import dataclasses

import torch

from ckd.losses import sp_loss
from ckd.methods.base import METHODS, Batch, Method, MethodOptions


@dataclasses.dataclass
class SPOptions(MethodOptions):
    # Defaults: mdistiller mdistiller/engine/cfg.py (SP.LOSS.CE_WEIGHT 1.0, FEAT_WEIGHT 3000) =
    # RepDistiller scripts/run_cifar_distill.sh (--distill similarity -a 0 -b 3000). Stage: the
    # deepest feature map (mdistiller feats[-1], RepDistiller feat[-2]).
    w_ce: float = 1.0
    w_sp: float = 3000.0


@METHODS.register("sp")
class SP(Method[SPOptions]):
    Options = SPOptions
    needs_features = True
    description = "matches the row-normalised [B, B] similarity of the deepest feature maps"
    paper = "Tung & Mori, Similarity-Preserving Knowledge Distillation, ICCV 2019"

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        loss = sp_loss(b.student.feats[-1], b.teacher.feats[-1])
        return {"sp": self.options.w_sp * loss}
