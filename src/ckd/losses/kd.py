"""Hinton et al., "Distilling the Knowledge in a Neural Network" (2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ckd.losses._checks import as_float32, check_pair, check_temperature, in_full_precision


@in_full_precision
def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes, mean over the batch.

    Args:
        student_logits: ``[B, C]``, any float dtype; computed in float32.
        teacher_logits: ``[B, C]``; detached.
        temperature: T > 0.

    Returns:
        A float32 scalar.
    """
    check_pair(student_logits, teacher_logits)
    check_temperature(temperature)
    s, t = as_float32(student_logits, teacher_logits)
    log_p_student = F.log_softmax(s / temperature, dim=1)
    log_p_teacher = F.log_softmax(t / temperature, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    return kl.mean() * temperature**2
