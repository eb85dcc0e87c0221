"""ReviewKD's hierarchical context loss (HCL): Chen et al., "Distilling Knowledge via Knowledge
Review", CVPR 2021.

Each student map (the output of the method's attention-based fusion, already at the teacher's
shape) is compared with the teacher's map at several scales: the full map, then the map
average-pooled to ``4x4``, ``2x2`` and ``1x1`` (each level smaller than the map's height), with
weights ``1, 1/2, 1/4, 1/8`` over the levels used, normalised by their sum. The distance at each
level is the mean squared error. Summed over the stages. Definition as in the paper and the
reference code (dvlab-research ReviewKD ``CIFAR-100/model/reviewkd.py``, mdistiller
``mdistiller/distillers/ReviewKD.py``).

Computed in float32 whatever the input dtype (float64 inputs in float64; autocast is switched
off inside); no gradient reaches the teacher's maps; a one-line ValueError for inputs of the
wrong shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ckd.losses._checks import full_precision, wide

HCL_LEVELS = (4, 2, 1)  # pooled sizes, each used when smaller than the map's height


def _hcl_pair(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    total = F.mse_loss(s, t)
    weight, weights = 1.0, 1.0
    for level in HCL_LEVELS:
        if level >= s.shape[2]:
            continue
        weight /= 2
        pooled = F.mse_loss(F.adaptive_avg_pool2d(s, level), F.adaptive_avg_pool2d(t, level))
        total = total + weight * pooled
        weights += weight
    return total / weights


def hcl_loss(
    students: torch.Tensor | Sequence[torch.Tensor],
    teachers: torch.Tensor | Sequence[torch.Tensor],
) -> torch.Tensor:
    """Sum over stages of the multi-scale MSE between student and teacher maps.

    For a pair of ``[B, C, H, W]`` maps: ``(mse(s, t) + sum_k w_k mse(P_k(s), P_k(t))) /
    (1 + sum_k w_k)`` over the levels ``4, 2, 1`` smaller than ``H`` (``P_k``: adaptive average
    pooling to ``k x k``), ``w_k = 1/2, 1/4, 1/8`` in the order used.

    Args:
        students: a map or a sequence of maps ``[B, C_i, H_i, W_i]``; any float dtype.
        teachers: as many maps, each of its student's shape; detached.

    Returns:
        A float32 scalar (zero when every student map equals its teacher's).
    """
    s_maps = [students] if isinstance(students, torch.Tensor) else list(students)
    t_maps = [teachers] if isinstance(teachers, torch.Tensor) else list(teachers)
    if not s_maps or len(s_maps) != len(t_maps):
        raise ValueError(
            f"hcl_loss needs as many (>= 1) student and teacher maps; got {len(s_maps)} and "
            f"{len(t_maps)}"
        )
    for i, (s, t) in enumerate(zip(s_maps, t_maps, strict=True)):
        if s.dim() != 4 or s.shape != t.shape:
            raise ValueError(
                f"student and teacher map {i} must be [B, C, H, W] of one shape; got "
                f"{tuple(s.shape)} and {tuple(t.shape)}"
            )
    with full_precision(s_maps[0].device):
        pairs = zip(s_maps, t_maps, strict=True)
        terms = [_hcl_pair(wide(s), wide(t.detach())) for s, t in pairs]
        return torch.stack(terms).sum()
