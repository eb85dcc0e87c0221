"""KD-SVD: ``w_ce * CE + w_kdsvd * kdsvd_loss`` over every stage but the stem."""

from __future__ import annotations

import dataclasses

import torch

from ckd.losses import KDSVD_VECTORS, kdsvd_loss
from ckd.losses.feature import paired_stages
from ckd.methods.base import METHODS, Batch, Method, MethodOptions


@dataclasses.dataclass
class KDSVDOptions(MethodOptions):
    # Defaults: mdistiller mdistiller/engine/cfg.py (KDSVD.K 1, LOSS.CE_WEIGHT 1.0, FEAT_WEIGHT
    # 1.0) and its feats[1:] (all but the stem, aligned here from the deepest stage).
    # RepDistiller has the loss but no CIFAR recipe for it.
    w_ce: float = 1.0
    w_kdsvd: float = 1.0
    k: int = 1  # teacher singular vectors kept (the student keeps k + 3)
    # "width": mdistiller's [C*H, W] matrix; "channel": the paper's [H*W, C] (needs equal
    # channel counts), see ckd.losses.kdsvd_loss
    vectors: str = "width"

    def validate(self) -> None:
        super().validate()
        self.require(self.k >= 1, "k", ">= 1")
        self.require(self.vectors in KDSVD_VECTORS, "vectors", f"one of {', '.join(KDSVD_VECTORS)}")


@METHODS.register("kdsvd")
class KDSVD(Method[KDSVDOptions]):
    Options = KDSVDOptions
    needs_features = True
    description = "RBF relations between consecutive stages' leading singular vectors"
    paper = (
        "Lee, Kim & Song, Self-supervised Knowledge Distillation Using Singular Value "
        "Decomposition, ECCV 2018"
    )
    graph_unsafe = "its SVD makes the host wait for the device (torch.linalg.svd on CUDA)"

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        s, t = paired_stages(b.student.feats, b.teacher.feats)
        return {"kdsvd": o.w_kdsvd * kdsvd_loss(s, t, o.k, o.vectors)}
