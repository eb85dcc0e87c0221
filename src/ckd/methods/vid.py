"""VID: ``w_ce * CE + w_vid * sum_stages vid_loss(regressor(student map), teacher map)``.

Stages: the stage features after the stem (post-activation, as the reference uses), aligned from
the deepest when the networks have different numbers of stages. When a student map is larger than
the teacher's it is average-pooled to the teacher's size before its regressor; a larger teacher
map is pooled to the student's. Each stage has its own regressor (1x1 conv, ReLU, 1x1 conv, ReLU,
1x1 conv, no biases, to the teacher's channels; PyTorch's default conv initialisation) and its own
learned per-channel variance ``softplus(alpha) + eps``, initialised to ``init_pred_var``.

Both are modules of the method, trained, checkpointed and resumed with the student. The variance
is learned as in the paper and RepDistiller (``distiller_zoo/VID.py``, where ``log_scale`` is a
registered parameter); mdistiller keeps its ``log_scales`` in a plain list, so there they are
neither optimised nor counted.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ckd.losses import vid_log_scale_init, vid_loss
from ckd.methods.base import METHODS, Batch, Method, MethodOptions, Setup, aligned_stages


@dataclasses.dataclass
class VIDOptions(MethodOptions):
    # Defaults: mdistiller mdistiller/engine/cfg.py (VID.LOSS.CE_WEIGHT 1.0, FEAT_WEIGHT 1.0,
    # VID.EPS 1e-5, VID.INIT_PRED_VAR 5.0; configs/cifar100/vid.yaml, resnet32x4 -> resnet8x4,
    # keeps them) = RepDistiller VIDLoss(init_pred_var=5.0, eps=1e-5), run with -r 1 -a 0 -b 1.
    w_ce: float = 1.0
    w_vid: float = 1.0
    init_pred_var: float = 5.0
    eps: float = 1e-5

    def validate(self) -> None:
        super().validate()
        self.require(self.eps > 0, "eps", "> 0")
        self.require(self.init_pred_var > self.eps, "init_pred_var", "> eps")


def regressor(c_in: int, c_out: int) -> nn.Sequential:
    """1x1 conv, ReLU, 1x1 conv, ReLU, 1x1 conv (no biases); hidden width = ``c_out``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 1, bias=False),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 1, bias=False),
    )


@METHODS.register("vid")
class VID(Method[VIDOptions]):
    Options = VIDOptions
    needs_features = True
    description = (
        "Gaussian likelihood of teacher stage features under means regressed from the student's"
    )
    paper = "Ahn et al., Variational Information Distillation for Knowledge Transfer, CVPR 2019"

    def __init__(self, options: VIDOptions, setup: Setup) -> None:
        super().__init__(options, setup)
        self.student_stages, self.teacher_stages = aligned_stages(setup, "vid")
        assert setup.student is not None and setup.teacher is not None  # aligned_stages checks
        s_feats, t_feats = setup.student.feats, setup.teacher.feats
        pairs = list(zip(self.student_stages, self.teacher_stages, strict=True))
        self.regressors = nn.ModuleList(regressor(s_feats[i][0], t_feats[j][0]) for i, j in pairs)
        start = vid_log_scale_init(options.init_pred_var, options.eps)
        self.log_scales = nn.ParameterList(
            nn.Parameter(torch.full((t_feats[j][0],), start)) for _, j in pairs
        )

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        terms = []
        for k, (i, j) in enumerate(zip(self.student_stages, self.teacher_stages, strict=True)):
            s, t = b.student.feats[i], b.teacher.feats[j]
            if s.shape[2] > t.shape[2] or s.shape[3] > t.shape[3]:
                s = F.adaptive_avg_pool2d(s, (t.shape[-2], t.shape[-1]))
            terms.append(vid_loss(self.regressors[k](s), t, self.log_scales[k], o.eps))
        return {"vid": o.w_vid * torch.stack(terms).sum()}
