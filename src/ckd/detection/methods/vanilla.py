"""No distillation: the detector's own losses alone (how a teacher is trained)."""

from __future__ import annotations

import torch

from ckd.detection.methods.base import DET_METHODS, DetBatch, DetMethod


@DET_METHODS.register("vanilla")
class DetVanilla(DetMethod):
    needs_teacher = False
    description = "the detector's own losses (RPN, box head, mask head) only"
    paper = "Ren et al., Faster R-CNN, NeurIPS 2015; He et al., Mask R-CNN, ICCV 2017"

    def forward(self, b: DetBatch) -> dict[str, torch.Tensor]:
        return {}
