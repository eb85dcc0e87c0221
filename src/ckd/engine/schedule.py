"""The learning-rate schedule as a pure function of the optimisation step.

One scheduler serves epoch- and iteration-based training: the ``optim`` section's counts
(length, milestones, warm-up) are converted once to optimisation steps with the number of steps
per epoch (as timm's scheduler factory does with ``t_initial * updates_per_epoch``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ckd.config import OptimConfig


@dataclass(frozen=True)
class Schedule:
    """The learning rate of each optimisation step of a run.

    - ``step``: ``lr * gamma ** (number of milestones reached)``; in an epoch schedule a
      milestone ``m`` is reached at the first step of epoch ``m`` (the reference code's
      convention: with ``milestones=[150]`` epochs 0..149 use ``lr``).
    - ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * t / T)) / 2``, per step, with
      ``t`` the steps done and ``T`` the run's steps.
    - ``constant``: ``lr``.

    A linear warm-up over ``W`` steps then scales it by ``min((t + 1) / W, 1)`` (so the first
    step is not at 0). Everything is times ``scale`` (linear scaling with the batch size).

    With ``hold`` > 1 (``optim.lr_update: epoch`` on an epoch schedule) each step gets the rate
    of the first step of its epoch (``t`` rounded down to a multiple of ``hold``): the reference
    code's ``CosineAnnealingLR.step()`` once per epoch.
    """

    lr: float
    min_lr: float
    kind: str
    total: int  # steps of the whole run
    milestones: tuple[int, ...]  # in steps
    gamma: float
    warmup: float  # in steps
    scale: float = 1.0
    hold: int = 1  # steps that share one rate

    @classmethod
    def of(cls, optim: OptimConfig, steps_per_epoch: int, batch_size: int) -> Schedule:
        """The schedule of ``optim`` for epochs of ``steps_per_epoch`` steps."""
        unit = steps_per_epoch if optim.unit == "epoch" else 1
        warmup = optim.warmup_epochs * steps_per_epoch + optim.warmup_iters
        scale = 1.0 if optim.lr_reference_batch is None else batch_size / optim.lr_reference_batch
        return cls(
            lr=optim.lr,
            min_lr=optim.min_lr,
            kind=optim.schedule,
            total=optim.length * unit,
            milestones=tuple(m * unit for m in optim.milestones),
            gamma=optim.gamma,
            warmup=float(warmup),
            scale=scale,
            hold=steps_per_epoch if optim.lr_update == "epoch" and optim.unit == "epoch" else 1,
        )

    def __call__(self, step: int) -> float:
        step -= step % self.hold
        if self.kind == "step":
            lr = self.lr * self.gamma ** sum(step >= m for m in self.milestones)
        elif self.kind == "cosine":
            lr = self.min_lr + (self.lr - self.min_lr) * 0.5 * (
                1 + math.cos(math.pi * step / self.total)
            )
        else:
            lr = self.lr
        if self.warmup > 0:
            lr *= min((step + 1) / self.warmup, 1.0)
        return lr * self.scale
