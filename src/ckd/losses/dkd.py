"""Decoupled Knowledge Distillation: Zhao et al., CVPR 2022."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ckd.losses._checks import as_float32, check_pair, check_temperature, in_full_precision


def _binary_log_probs(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``[B, 2]`` log-probabilities of (target class, all other classes) under softmax(logits)."""
    log_total = torch.logsumexp(logits, dim=1)
    log_target = logits.gather(1, gt[:, None]).squeeze(1) - log_total
    target = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, gt[:, None], True)
    others = logits.masked_fill(target, float("-inf"))
    log_others = torch.logsumexp(others, dim=1) - log_total
    return torch.stack([log_target, log_others], dim=1)


def _non_target(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``[B, C-1]``: the logits without the target class, order kept (a gather, not a boolean
    mask: no data-dependent size, so no wait for the device, and a CUDA graph can hold it)."""
    columns = torch.arange(logits.shape[1] - 1, device=logits.device).expand(len(gt), -1)
    return logits.gather(1, columns + (columns >= gt[:, None]))


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per row, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


@in_full_precision
def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    """``alpha * TCKD + beta * NCKD``, each part times ``T^2``, mean over the batch.

    TCKD is the KL between the binary (target, non-target) distributions of teacher and student;
    NCKD the KL between their distributions over the non-target classes alone (the softmax of the
    logits with the target class removed), both at temperature T.

    Args:
        student_logits: ``[B, C]`` with C >= 2, any float dtype; computed in float32.
        teacher_logits: ``[B, C]``; detached.
        target: ``[B]`` int64 class indices.
        alpha, beta: weights of TCKD and NCKD.
        temperature: T > 0.

    Returns:
        A float32 scalar.
    """
    check_pair(student_logits, teacher_logits)
    check_temperature(temperature)
    if student_logits.shape[1] < 2:
        raise ValueError(f"dkd_loss needs at least 2 classes; got {student_logits.shape[1]}")
    if target.shape != student_logits.shape[:1]:
        raise ValueError(
            f"target must be [B] = [{student_logits.shape[0]}]; got {tuple(target.shape)}"
        )
    s, t = as_float32(student_logits, teacher_logits)
    s, t = s / temperature, t / temperature
    gt = target.long()
    tckd = _kl(_binary_log_probs(t, gt), _binary_log_probs(s, gt))
    nckd = _kl(F.log_softmax(_non_target(t, gt), dim=1), F.log_softmax(_non_target(s, gt), dim=1))
    return (alpha * tckd.mean() + beta * nckd.mean()) * temperature**2
