"""ReviewKD on the FPN features: the student's levels fused deep-to-shallow by attention (the
classification method's :class:`~ckd.methods.reviewkd.ABF` modules), each matched to the
teacher's level of the same stride by the hierarchical context loss
(:func:`~ckd.losses.hcl_loss`). Levels ``'0'..'3', 'pool'`` (strides 4..64); the deepest does
not fuse; ``mid = min(max_mid_channels, student FPN channels)``. The ABFs are trained,
checkpointed and resumed with the student."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ckd.detection.methods.base import (
    DET_METHODS,
    DetBatch,
    DetMethod,
    DetMethodOptions,
    DetSetup,
)
from ckd.losses import hcl_loss
from ckd.methods.base import linear_warmup
from ckd.methods.reviewkd import ABF


@dataclasses.dataclass
class DetReviewKDOptions(DetMethodOptions):
    w_reviewkd: float = 1.0  # the released detection recipes: 1.0 to 2.0
    warmup_iters: int = 0
    max_mid_channels: int = 256

    def validate(self) -> None:
        super().validate()
        self.require(self.warmup_iters >= 0, "warmup_iters", ">= 0")
        self.require(self.max_mid_channels >= 1, "max_mid_channels", ">= 1")


@DET_METHODS.register("reviewkd")
class DetReviewKD(DetMethod):
    Options = DetReviewKDOptions
    description = "student FPN levels fused by attention (ABF), matched to the teacher's (HCL)"
    paper = "Chen et al., Distilling Knowledge via Knowledge Review, CVPR 2021"

    def __init__(self, options: DetReviewKDOptions, setup: DetSetup) -> None:
        super().__init__(options, setup)
        c_s, c_t = setup.student_channels, setup.teacher_channels
        if c_t is None:
            raise ValueError("reviewkd needs the teacher's FPN channels in its DetSetup")
        mid = min(options.max_mid_channels, c_s)
        n = len(setup.levels)
        self.abfs = nn.ModuleList(ABF(c_s, mid, c_t, fuse=k < n - 1) for k in range(n))

    def fused(self, b: DetBatch) -> list[torch.Tensor]:
        """The ABF outputs, shallow to deep, each of its teacher level's shape."""
        levels = self.setup.levels
        outputs: list[torch.Tensor] = []
        deeper = None
        for k in reversed(range(len(levels))):
            size = tuple(b.teacher_features[levels[k]].shape[-2:])
            out, deeper = self.abfs[k](b.student_features[levels[k]], deeper, size)
            outputs.insert(0, out)
        return outputs

    def forward(self, b: DetBatch) -> dict[str, torch.Tensor]:
        o = self.options
        teacher = [b.teacher_features[name] for name in self.setup.levels]
        term = hcl_loss(self.fused(b), teacher)
        return {"fpn_reviewkd": linear_warmup(b.iteration, o.warmup_iters) * o.w_reviewkd * term}
