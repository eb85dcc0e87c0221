"""OFD: Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV 2019.

The teacher's feature is taken before its ReLU. Negative teacher responses only matter as far as
they are "off", so each channel's teacher value is raised to a margin ``m_c < 0`` (the expected
value of the teacher's pre-activation given that it is negative, from the statistics of the BN
that precedes the ReLU), and the student (its pre-activation through a connector) is penalised
with a *partial* L2 that ignores positions where both are at or below zero with the student
below the teacher. Definitions as in the paper, with the reductions of the reference code
(mdistiller ``mdistiller/distillers/OFD.py``): a sum over ``C, H, W``, a mean over the batch, the
teacher average-pooled to the student's size, and stage ``i`` of ``n`` weighted ``1/2^(n-1-i)``.

All functions compute in float32 whatever the input dtype (float64 inputs in float64; autocast
is switched off inside), never send a gradient into the teacher's tensors, and raise a one-line
ValueError for inputs of the wrong shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ckd.losses._checks import full_precision, wide

# Below this probability of a negative pre-activation the margin is set to -3 sigma (reference).
_MIN_NEGATIVE_MASS = 1e-3


def ofd_margin(bn_weight: torch.Tensor, bn_bias: torch.Tensor) -> torch.Tensor:
    """Per-channel margin from the BN that precedes the teacher's ReLU.

    With the pre-activation ``x ~ N(mu, sigma^2)``, ``sigma = |gamma|`` (BN weight) and
    ``mu = beta`` (BN bias), the margin is ``E[x | x < 0] = mu - sigma * phi(mu/sigma) /
    Phi(-mu/sigma)`` when ``Phi(-mu/sigma) > 1e-3``, else ``-3 sigma``. It is always <= 0.

    Args:
        bn_weight, bn_bias: ``[C]``; read without gradient.

    Returns:
        ``[C]`` float32 on the inputs' device (computed in float64 on the CPU, as the reference
        does with scipy).
    """
    if bn_weight.dim() != 1 or bn_weight.shape != bn_bias.shape:
        raise ValueError(
            f"bn_weight and bn_bias must both be [C]; got {tuple(bn_weight.shape)} and "
            f"{tuple(bn_bias.shape)}"
        )
    sigma = bn_weight.detach().to("cpu", torch.float64).abs()
    mu = bn_bias.detach().to("cpu", torch.float64)
    ratio = mu / sigma.clamp_min(1e-300)  # sigma = 0 gives the limits: mu (mu < 0) or 0
    negative_mass = torch.special.ndtr(-ratio)
    density = torch.exp(-0.5 * ratio**2) / math.sqrt(2 * math.pi)
    truncated_mean = mu - sigma * density / negative_mass.clamp_min(1e-300)
    margin = torch.where(negative_mass > _MIN_NEGATIVE_MASS, truncated_mean, -3 * sigma)
    return margin.to(bn_weight.device, torch.float32)


def _check_stage(student: torch.Tensor, teacher: torch.Tensor, margin: torch.Tensor) -> None:
    for side, x in (("student", student), ("teacher", teacher)):
        if x.dim() != 4:
            raise ValueError(f"{side} feature must be [B, C, H, W]; got shape {tuple(x.shape)}")
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"student and teacher features need the same [B, C]; got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )
    if margin.shape != (student.shape[1],):
        raise ValueError(
            f"margin must be [C] = [{student.shape[1]}]; got shape {tuple(margin.shape)}"
        )


def ofd_partial_l2(
    student: torch.Tensor, teacher: torch.Tensor, margin: torch.Tensor
) -> torch.Tensor:
    """One stage's OFD distance: ``(1/B) sum_{b,c,h,w} d_p(max(t, m_c), s)``.

    ``d_p(t', s) = 0`` where ``s <= t' <= 0`` and ``(t' - s)^2`` elsewhere, with the teacher
    ``t' = max(t, m_c)`` raised to the channel's margin. For margins <= 0 (as
    :func:`ofd_margin` gives) this is the reference's three masks: ``(s - t)^2`` where ``t > 0``;
    ``(s - t)^2`` where ``m < t <= 0`` and ``s > t``; ``(s - m)^2`` where ``t <= m`` and ``s > m``.

    Args:
        student: ``[B, C, H, W]``, the student's pre-activation after the connector; any float
            dtype, computed in float32.
        teacher: ``[B, C, H', W']``, the teacher's pre-activation; detached, average-pooled to
            ``H x W`` when the sizes differ (as the reference does).
        margin: ``[C]``, per-channel margins (<= 0); detached.

    Returns:
        A float32 scalar.
    """
    _check_stage(student, teacher, margin)
    with full_precision(student.device):
        s = wide(student)
        t = wide(teacher.detach())
        if t.shape[-2:] != s.shape[-2:]:
            t = F.adaptive_avg_pool2d(t, (s.shape[-2], s.shape[-1]))
        t = torch.maximum(t, margin.detach().to(t.dtype).view(1, -1, 1, 1))
        ignored = (s <= t) & (t <= 0)
        distance = torch.where(ignored, torch.zeros_like(s), (s - t) ** 2)
        return distance.sum() / s.shape[0]


def ofd_loss(
    students: Sequence[torch.Tensor],
    teachers: Sequence[torch.Tensor],
    margins: Sequence[torch.Tensor],
) -> torch.Tensor:
    """The OFD loss over ``n`` stages, shallow to deep: ``sum_i ofd_partial_l2(s_i, t_i, m_i) /
    2^(n-1-i)`` (the deepest stage has weight 1, each shallower one half the next).

    Args:
        students: ``n`` maps ``[B, C_i, H_i, W_i]`` (connector outputs).
        teachers: ``n`` maps ``[B, C_i, H'_i, W'_i]`` (teacher pre-activations; detached).
        margins: ``n`` tensors ``[C_i]``.

    Returns:
        A float32 scalar.
    """
    students, teachers, margins = list(students), list(teachers), list(margins)
    n = len(students)
    if n == 0 or len(teachers) != n or len(margins) != n:
        raise ValueError(
            f"ofd_loss needs as many (>= 1) student maps, teacher maps and margins; got "
            f"{n}, {len(teachers)} and {len(margins)}"
        )
    terms = [
        ofd_partial_l2(s, t, m) / 2 ** (n - 1 - i)
        for i, (s, t, m) in enumerate(zip(students, teachers, margins, strict=True))
    ]
    return torch.stack(terms).sum()
