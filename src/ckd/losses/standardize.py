"""Logit standardisation: Sun et al., "Logit Standardization in Knowledge Distillation",
CVPR 2024 (arXiv 2403.01427).

Each sample's logit vector is z-scored over the classes before the softmax, for the teacher and
the student alike, so the student matches the teacher's logit *relations* rather than their
range: ``Z(z) = (z - mean(z)) / std(z)``, with the population std over the C classes. The result
is invariant to a per-sample positive scaling and shift of the logits. The loss's temperature T
then divides the standardised logits (the paper's ``Z(z; tau) = (z - mean) / (std * tau)``, its
"base temperature"); standardised logits have unit std, so T is much smaller than plain KD's 4:
the authors' CIFAR-100 runs of KD / DKD with it use T = 2 (3 for a few pairs) and a KD weight of
9 (README and log names of github.com/sunshangquan/logit-standardization-KD).
"""

from __future__ import annotations

import torch

from ckd.losses._checks import wide

EPS = 1e-7


def standardize_logits(logits: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Z-score each row of ``logits`` ``[B, C]`` over its C classes, in float32.

    ``(z - mean(z)) / (std(z) + eps)`` with ``std`` the population standard deviation
    (``1/C``); ``eps`` keeps a constant row finite (it becomes zeros). The gradient flows through
    (the teacher's logits are detached by the losses that use the result).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, C]; got shape {tuple(logits.shape)}")
    z = wide(logits)
    mean = z.mean(dim=1, keepdim=True)
    std = z.std(dim=1, keepdim=True, correction=0)
    return (z - mean) / (std + eps)
