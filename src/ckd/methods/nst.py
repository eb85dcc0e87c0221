"""Neuron selectivity transfer: ``w_ce * CE + w_nst * nst_loss`` over every stage but the stem."""

from __future__ import annotations

import dataclasses

import torch

from ckd.losses import nst_loss
from ckd.losses.feature import paired_stages
from ckd.methods.base import METHODS, Batch, Method, MethodOptions


@dataclasses.dataclass
class NSTOptions(MethodOptions):
    # Defaults: mdistiller mdistiller/engine/cfg.py (NST.LOSS.CE_WEIGHT 1.0, FEAT_WEIGHT 50)
    # = RepDistiller scripts/run_cifar_distill.sh (--distill nst -a 0 -b 50). Stages: the
    # reference's feats[1:] (all but the stem), aligned from the deepest stage.
    w_ce: float = 1.0
    w_nst: float = 50.0


@METHODS.register("nst")
class NST(Method[NSTOptions]):
    Options = NSTOptions
    needs_features = True
    description = "MMD (polynomial kernel) between student and teacher channel activation maps"
    paper = (
        "Huang & Wang, Like What You Like: Knowledge Distill via Neuron Selectivity Transfer, "
        "arXiv 1707.01219, 2017"
    )

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        s, t = paired_stages(b.student.feats, b.teacher.feats)
        return {"nst": self.options.w_nst * nst_loss(s, t)}
