"""Hinton KD: ``w_ce * task loss + w_kd * kd_loss``, optionally on standardised logits (on
detection: the RoI logits, background included as a class)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from ckd.losses import kd_loss, standardize_logits
from ckd.methods.base import METHODS, Batch, Method, MethodOptions


@dataclasses.dataclass
class KDOptions(MethodOptions):
    TASK_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "detection": {"w_ce": 1.0, "w_kd": 1.0, "temperature": 1.0}
    }

    w_ce: float = 0.1
    w_kd: float = 0.9
    temperature: float = 4.0
    # z-score teacher and student logits per sample first (Sun et al., CVPR 2024); the authors
    # pair it with temperature 2 and w_kd 9 (see ckd.losses.standardize), not these defaults
    logit_standardize: bool = False

    def validate(self) -> None:
        super().validate()
        self.require(self.temperature > 0, "temperature", "> 0")


@METHODS.register("kd")
class KD(Method[KDOptions]):
    Options = KDOptions
    tasks = ("classification", "detection")
    description = "KL between temperature-softened teacher and student probabilities"
    paper = "Hinton et al., Distilling the Knowledge in a Neural Network, 2015"

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        s, t = b.student.logits, b.teacher.logits
        if o.logit_standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        return {"kd": o.w_kd * kd_loss(s, t, o.temperature)}
