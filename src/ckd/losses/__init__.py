"""Pure loss functions on logits. Every function computes in float32 whatever the input dtype
(bf16 / fp16 promoted; float64 inputs stay float64, e.g. for gradcheck) and never sends a gradient
into the teacher's logits.

Shapes: ``student_logits`` and ``teacher_logits`` are ``[B, C]``; ``target`` is ``[B]`` (int64).
"""

from ckd.losses.ckd import NEGATIVES, ckd_loss
from ckd.losses.dkd import dkd_loss
from ckd.losses.kd import kd_loss

__all__ = ["NEGATIVES", "ckd_loss", "dkd_loss", "kd_loss"]

# Feature- and relation-based losses (feature maps [B, C, H, W], embeddings [B, D]).
from ckd.losses.feature import (  # noqa: E402
    KDSVD_VECTORS,
    at_loss,
    fitnet_loss,
    kdsvd_loss,
    nst_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    sp_loss,
)

__all__ += [
    "KDSVD_VECTORS",
    "at_loss",
    "fitnet_loss",
    "kdsvd_loss",
    "nst_loss",
    "pkt_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "rkd_loss",
    "sp_loss",
]

# OFD, VID, CRD and ReviewKD (pre-activation maps, regressed maps, banked embeddings, fused maps).
from ckd.losses.crd import (  # noqa: E402
    crd_loss,
    crd_memory_update,
    crd_normalisers,
    crd_scores,
    nce_loss,
)
from ckd.losses.ofd import ofd_loss, ofd_margin, ofd_partial_l2  # noqa: E402
from ckd.losses.reviewkd import hcl_loss  # noqa: E402
from ckd.losses.vid import vid_log_scale_init, vid_loss, vid_variance  # noqa: E402

__all__ += [
    "crd_loss",
    "crd_memory_update",
    "crd_normalisers",
    "crd_scores",
    "hcl_loss",
    "nce_loss",
    "ofd_loss",
    "ofd_margin",
    "ofd_partial_l2",
    "vid_log_scale_init",
    "vid_loss",
    "vid_variance",
]

from ckd.losses.standardize import standardize_logits  # noqa: E402

__all__ += ["standardize_logits"]
