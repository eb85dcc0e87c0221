"""OFD: ``w_ce * CE + w_ofd * ofd_loss(connector(student pre-ReLU), teacher pre-ReLU, margins)``.

Stages: the stage features after the stem, aligned from the deepest when the two networks have
different numbers of stages (as the reference's ``_align_list``). Each student stage goes through
a connector (conv ``k x k`` + BN, to the teacher's channels), the teacher's map is average-pooled
to the student's size, and the per-channel margins come from the teacher's BN before each ReLU
(the zoo's ``preact_bn_names``; computed once, on the first batch, from the frozen teacher).

**Pre-activation features.** OFD sets ``needs_preact``, so the distiller reads the maps *before*
the ReLU (each zoo model names them in ``preact_names``) in its one forward of each network. A
student that names none (a torchvision / timm model) is distilled from its post-activation stage
maps instead; a teacher must name them, and its BN before each ReLU (``preact_bn_names``), from
which :meth:`OFD.attach` computes the margins once; a teacher without them (ShuffleV2, as in the
reference) is refused.

Deviation from mdistiller: its OFD distiller puts the teacher in train mode (BN on batch
statistics, running statistics updated); here the teacher stays frozen in eval mode like in every
other method.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ckd.losses import ofd_loss, ofd_margin
from ckd.methods.base import (
    METHODS,
    Batch,
    Method,
    MethodOptions,
    Setup,
    aligned_stages,
)
from ckd.methods.views import preact_names


# ----------------------------------------------------------------------------- OFD
@dataclasses.dataclass
class OFDOptions(MethodOptions):
    # Defaults: mdistiller mdistiller/engine/cfg.py (OFD.LOSS.CE_WEIGHT 1.0,
    # OFD.LOSS.FEAT_WEIGHT 0.001, OFD.CONNECTOR.KERNEL_SIZE 1); configs/cifar100/ofd.yaml
    # (resnet32x4 -> resnet8x4) keeps them.
    w_ce: float = 1.0
    w_ofd: float = 1e-3
    connector_kernel: int = 1  # odd; the connector's conv is k x k, padding (k-1)/2

    def validate(self) -> None:
        super().validate()
        self.require(
            self.connector_kernel >= 1 and self.connector_kernel % 2 == 1,
            "connector_kernel",
            "an odd integer >= 1",
        )


def connector(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    """Conv ``k x k`` (no bias) + BN from the student's to the teacher's channels; He-normal
    conv weights (fan out) and BN ``(1, 0)``, as in the reference."""
    conv = nn.Conv2d(c_in, c_out, kernel, padding=(kernel - 1) // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel * kernel * c_out)))
    bn = nn.BatchNorm2d(c_out)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


@METHODS.register("ofd")
class OFD(Method[OFDOptions]):
    Options = OFDOptions
    needs_features = True
    needs_preact = True
    description = (
        "partial L2 between connected student and margin-clipped teacher pre-ReLU stage features"
    )
    paper = "Heo et al., A Comprehensive Overhaul of Feature Distillation, ICCV 2019"

    def __init__(self, options: OFDOptions, setup: Setup) -> None:
        super().__init__(options, setup)
        self.student_stages, self.teacher_stages = aligned_stages(setup, "ofd")
        assert setup.student is not None and setup.teacher is not None  # aligned_stages checks
        s_feats, t_feats = setup.student.feats, setup.teacher.feats
        self.connectors = nn.ModuleList(
            connector(s_feats[i][0], t_feats[j][0], options.connector_kernel)
            for i, j in zip(self.student_stages, self.teacher_stages, strict=True)
        )

    def attach(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """The per-stage margins ``[C_t]`` from the teacher's BN before each ReLU, as buffers."""
        if teacher is None or preact_names(teacher) is None:
            raise ValueError(
                f"ofd needs the teacher's pre-activation features; {type(teacher).__name__} "
                "names none (preact_names)"
            )
        names = getattr(teacher, "preact_bn_names", ())
        if len(names) != len(getattr(teacher, "stage_names", ())) or not names:
            raise ValueError(
                f"ofd: {type(teacher).__name__} does not name the BN before each stage's ReLU "
                "(preact_bn_names), so it cannot be an OFD teacher"
            )
        for k, j in enumerate(self.teacher_stages):
            bn = teacher.get_submodule(names[j])
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.weight is None:
                raise ValueError(
                    f"ofd: {type(teacher).__name__}'s {names[j]} is not a BN with weight and "
                    "bias (preact_bn_names), so it cannot be an OFD teacher"
                )
            self.register_buffer(f"margin{k}", ofd_margin(bn.weight, bn.bias), persistent=False)

    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin{k}") for k in range(len(self.teacher_stages))]

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        teacher_maps = [b.teacher.preact[j] for j in self.teacher_stages]
        student_maps = [b.student.preact[i] for i in self.student_stages]
        projected = [c(x) for c, x in zip(self.connectors, student_maps, strict=True)]
        term = ofd_loss(projected, teacher_maps, self.margins())
        return {"ofd": self.options.w_ofd * term}
