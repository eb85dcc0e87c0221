"""VID: Ahn et al., "Variational Information Distillation for Knowledge Transfer", CVPR 2019.

The mutual information between a teacher feature ``t`` and the student is bounded from below by
the log-likelihood of ``t`` under a Gaussian whose mean ``mu(s)`` is regressed from the student's
feature (the method's regressor) and whose per-channel variance is learned
(heteroscedastic over channels, homoscedastic over positions):
``sigma_c^2 = softplus(alpha_c) + eps``. The loss is the negative log-likelihood without its
constant, ``0.5 * ((t - mu)^2 / sigma_c^2 + log sigma_c^2)``, averaged over every element (batch,
channels, positions), as in the reference code (RepDistiller ``distiller_zoo/VID.py``,
mdistiller ``mdistiller/distillers/VID.py``).

All functions compute in float32 whatever the input dtype (float64 inputs in float64; autocast
is switched off inside), never send a gradient into the teacher's tensors, and raise a one-line
ValueError for inputs of the wrong shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ckd.losses._checks import full_precision, wide


def vid_log_scale_init(init_pred_var: float, eps: float) -> float:
    """The ``alpha`` with ``softplus(alpha) + eps == init_pred_var``: ``log(exp(v - eps) - 1)``."""
    if not init_pred_var > eps >= 0:
        raise ValueError(f"init_pred_var must exceed eps >= 0; got {init_pred_var} and {eps}")
    return math.log(math.expm1(init_pred_var - eps))


def vid_variance(log_scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-channel variance ``softplus(log_scale) + eps``, float32 ``[C]``."""
    return F.softplus(wide(log_scale)) + eps


def vid_loss(
    pred_mean: torch.Tensor,
    target: torch.Tensor,
    log_scale: torch.Tensor,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Gaussian negative log-likelihood (no constant) of the teacher feature, mean over elements.

    ``mean_{b,c,h,w} 0.5 * ((t - mu)^2 / v_c + log v_c)`` with ``v_c = softplus(log_scale_c) +
    eps``.

    Args:
        pred_mean: ``[B, C, H, W]``, the regressor's prediction from the student's feature (the
            student map is average-pooled to the teacher's size *before* the regressor when it
            is larger); any float dtype, computed in float32.
        target: ``[B, C, H', W']`` with ``H' >= H``, ``W' >= W``, the teacher's feature; detached,
            average-pooled to ``H x W`` when larger (as the reference does).
        log_scale: ``[C]``, the learned pre-softplus variance parameter (gets a gradient).
        eps: variance floor, > 0 keeps the loss finite.

    Returns:
        A float32 scalar.
    """
    if pred_mean.dim() != 4 or target.dim() != 4:
        raise ValueError(
            f"pred_mean and target must be [B, C, H, W]; got {tuple(pred_mean.shape)} and "
            f"{tuple(target.shape)}"
        )
    if pred_mean.shape[:2] != target.shape[:2]:
        raise ValueError(
            f"pred_mean and target need the same [B, C]; got {tuple(pred_mean.shape)} and "
            f"{tuple(target.shape)}"
        )
    if target.shape[2] < pred_mean.shape[2] or target.shape[3] < pred_mean.shape[3]:
        raise ValueError(
            f"target must be at least as large as pred_mean (pool the student before the "
            f"regressor); got {tuple(target.shape)} and {tuple(pred_mean.shape)}"
        )
    if log_scale.shape != (pred_mean.shape[1],):
        raise ValueError(
            f"log_scale must be [C] = [{pred_mean.shape[1]}]; got shape {tuple(log_scale.shape)}"
        )
    with full_precision(pred_mean.device):
        mu = wide(pred_mean)
        t = wide(target.detach())
        if t.shape[-2:] != mu.shape[-2:]:
            t = F.adaptive_avg_pool2d(t, (mu.shape[-2], mu.shape[-1]))
        var = vid_variance(log_scale, eps).view(1, -1, 1, 1)
        return (0.5 * ((mu - t) ** 2 / var + torch.log(var))).mean()
