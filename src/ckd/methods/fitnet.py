"""FitNet: ``w_ce * CE + w_fitnet * fitnet_loss(regressor(student hint), teacher hint)``.

The regressor (conv + BN + ReLU, as in the reference code's ``ConvReg``) maps the student's hint
stage to the teacher's channels and spatial size; it is a module of the method, so it is
trained, checkpointed and resumed with the student. FitNet is trained in one stage here (hint
term and CE together), as in mdistiller and RepDistiller, not in the paper's two stages.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ckd.losses import fitnet_loss
from ckd.methods.base import METHODS, Batch, Method, MethodOptions, Setup


@dataclasses.dataclass
class FitNetOptions(MethodOptions):
    # Defaults: mdistiller mdistiller/engine/cfg.py (FITNET.LOSS.CE_WEIGHT 1.0, FEAT_WEIGHT 100,
    # HINT_LAYER 2) = RepDistiller scripts/run_cifar_distill.sh (--distill hint -a 0 -b 100,
    # train_student.py --hint_layer 2).
    w_ce: float = 1.0
    w_fitnet: float = 100.0
    # Index of the student's hint stage among its stage features (0 = stem, shallow to deep);
    # the teacher's guided stage is the one at the same distance from its deepest stage.
    hint_layer: int = 2

    def validate(self) -> None:
        super().validate()
        self.require(self.hint_layer >= 0, "hint_layer", ">= 0")


class HintRegressor(nn.Module):
    """Student hint ``[B, C_s, H_s, W_s]`` -> ``[B, C_t, H_t, W_t]``: conv, BN, ReLU.

    The conv follows the reference rule: 3x3 stride 2 when the student map is twice the
    teacher's size, a 4x4 stride-2 transposed conv when it is half, otherwise (student at least
    as large) a valid conv of kernel ``1 + H_s - H_t`` by ``1 + W_s - W_t`` (1x1 for equal sizes).
    """

    def __init__(self, student: tuple[int, ...], teacher: tuple[int, ...]) -> None:
        super().__init__()
        (c_s, h_s, w_s), (c_t, h_t, w_t) = student, teacher
        if h_s == 2 * h_t and w_s == 2 * w_t:
            self.conv: nn.Module = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
        elif 2 * h_s == h_t and 2 * w_s == w_t:
            self.conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
        elif h_s >= h_t and w_s >= w_t:
            self.conv = nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t))
        else:
            raise ValueError(
                f"fitnet: no regressor from a {h_s}x{w_s} student hint to a {h_t}x{w_t} teacher "
                "hint (the student map must be half, equal to or larger than the teacher's)"
            )
        self.bn = nn.BatchNorm2d(c_t)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.relu(self.bn(self.conv(x)))
        return out


def hint_stages(hint_layer: int, setup: Setup) -> tuple[int, int]:
    """(student index, teacher index) of the hint: the teacher's index is aligned from the end."""
    if setup.student is None or setup.teacher is None:
        raise ValueError("fitnet needs the student's and teacher's feature shapes in its Setup")
    n_s, n_t = len(setup.student.feats), len(setup.teacher.feats)
    t_index = hint_layer + n_t - n_s
    if not (hint_layer < n_s and 0 <= t_index < n_t):
        raise ValueError(
            f"method.hint_layer must index the student's {n_s} stages (and the teacher's "
            f"{n_t}, aligned from the deepest); got {hint_layer}"
        )
    return hint_layer, t_index


@METHODS.register("fitnet")
class FitNet(Method[FitNetOptions]):
    Options = FitNetOptions
    needs_features = True
    description = "MSE between a regressed student hint stage and the teacher's matching stage"
    paper = "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015"

    def __init__(self, options: FitNetOptions, setup: Setup) -> None:
        super().__init__(options, setup)
        self.student_index, self.teacher_index = hint_stages(options.hint_layer, setup)
        assert setup.student is not None and setup.teacher is not None  # hint_stages checks
        self.regressor = HintRegressor(
            setup.student.feats[self.student_index], setup.teacher.feats[self.teacher_index]
        )

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        hint = self.regressor(b.student.feats[self.student_index])
        guided = b.teacher.feats[self.teacher_index]
        return {"fitnet": self.options.w_fitnet * fitnet_loss(hint, guided)}
