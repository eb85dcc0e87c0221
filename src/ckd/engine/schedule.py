"""Learning-rate schedules as pure functions of the training position."""

from __future__ import annotations

import math

from ckd.config import OptimConfig


def lr_scale(optim: OptimConfig, batch_size: int) -> float:
    """The linear-scaling factor ``batch_size / optim.lr_reference_batch`` (1 when unset)."""
    return 1.0 if optim.lr_reference_batch is None else batch_size / optim.lr_reference_batch


def learning_rate(
    optim: OptimConfig, epoch: int, iteration: int, iters_per_epoch: int, scale: float = 1.0
) -> float:
    """Learning rate for ``iteration`` (0-based) of ``epoch`` (0-based), times ``scale`` (see
    :func:`lr_scale`).

    - ``step``: ``lr * gamma ** (number of milestones <= epoch)``, constant within an epoch (the
      reference code's convention: with ``milestones=[150]`` epochs 0..149 use ``lr``).
    - ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * t / epochs)) / 2``, per iteration,
      with ``t = epoch + iteration / iters_per_epoch``.
    - ``constant``: ``lr``.

    A linear warm-up over ``warmup_epochs`` then scales it by ``t' / warmup_epochs`` with
    ``t' = epoch + (iteration + 1) / iters_per_epoch`` (so the first step is not at 0).

    With ``optim.lr_update == "epoch"`` every iteration of an epoch gets the rate of its first
    (``iteration = 0``): the reference code's per-epoch ``CosineAnnealingLR.step()``.
    """
    if optim.lr_update == "epoch":
        iteration = 0
    t = epoch + iteration / iters_per_epoch
    if optim.schedule == "step":
        lr = optim.lr * optim.gamma ** sum(epoch >= m for m in optim.milestones)
    elif optim.schedule == "cosine":
        lr = optim.min_lr + (optim.lr - optim.min_lr) * 0.5 * (
            1 + math.cos(math.pi * t / optim.epochs)
        )
    else:
        lr = optim.lr
    if optim.warmup_epochs > 0:
        warm = (epoch + (iteration + 1) / iters_per_epoch) / optim.warmup_epochs
        lr *= min(warm, 1.0)
    return lr * scale
