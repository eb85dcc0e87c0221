"""Relational KD: ``w_ce * CE + w_rkd * (distance_weight * distance + angle_weight * angle)`` on
the embeddings; the two parts are reported as separate terms."""

from __future__ import annotations

import dataclasses

import torch

from ckd.losses import rkd_angle_loss, rkd_distance_loss
from ckd.methods.base import METHODS, Batch, Method, MethodOptions


@dataclasses.dataclass
class RKDOptions(MethodOptions):
    # Defaults: mdistiller mdistiller/engine/cfg.py (RKD.DISTANCE_WEIGHT 25, ANGLE_WEIGHT 50,
    # LOSS.CE_WEIGHT 1.0, FEAT_WEIGHT 1.0, PDIST.EPSILON 1e-12, PDIST.SQUARED False) =
    # RepDistiller (RKDLoss(w_d=25, w_a=50), scripts/run_cifar_distill.sh --distill rkd -a 0
    # -b 1). Input: the pooled embedding (the classifier's input).
    w_ce: float = 1.0
    w_rkd: float = 1.0
    distance_weight: float = 25.0
    angle_weight: float = 50.0
    squared: bool = False  # squared pairwise distances
    eps: float = 1e-12  # squared distances are clamped below at eps

    def validate(self) -> None:
        super().validate()
        self.require(self.eps > 0, "eps", "> 0")


@METHODS.register("rkd")
class RKD(Method[RKDOptions]):
    Options = RKDOptions
    needs_features = True
    embedding_only = True  # reads the embedding, no stage map
    description = "matches normalised pairwise distances and triplet angles of embeddings"
    paper = "Park et al., Relational Knowledge Distillation, CVPR 2019"

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        s, t = b.student.embedding, b.teacher.embedding
        assert s is not None and t is not None  # a feature method's outputs hold embeddings
        return {
            "rkd_distance": o.w_rkd * o.distance_weight * rkd_distance_loss(s, t, o.squared, o.eps),
            "rkd_angle": o.w_rkd * o.angle_weight * rkd_angle_loss(s, t),
        }
