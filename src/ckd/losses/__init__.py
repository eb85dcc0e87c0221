"""Pure loss functions on logits. Every function computes in float32 whatever the input dtype
and never sends a gradient into the teacher's logits.

Shapes: ``student_logits`` and ``teacher_logits`` are ``[B, C]``; ``target`` is ``[B]`` (int64).
"""

from ckd.losses.ckd import NEGATIVES, ckd_loss
from ckd.losses.dkd import dkd_loss
from ckd.losses.kd import kd_loss

__all__ = ["NEGATIVES", "ckd_loss", "dkd_loss", "kd_loss"]
