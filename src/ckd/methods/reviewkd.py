"""ReviewKD: ``w_ce * task loss + warmup * w_reviewkd * hcl_loss(fused student, teacher)``.

Knowledge review: every student level learns from the teacher's level *and the deeper ones*. The
student's stage features after the stem (post-activation, as in the reference) and its pooled
embedding (as a ``1x1`` map) are visited from deep to shallow; at each level an attention-based
fusion (ABF) module maps the student map to ``mid`` channels (1x1 conv + BN), fuses it with the
deeper level's result (nearest up-sampling, then a 1x1 conv + sigmoid giving two spatial
attention maps that weight the two), resizes the result to the teacher's map size (nearest) and
projects it to the teacher's channels (3x3 conv + BN); the deepest level has no fusion. The
outputs are compared with the teacher's pre-ReLU stage features and pooled embedding by the
hierarchical context loss. ``mid = min(max_mid_channels, student embedding size)``; the ABF
convs are initialised Kaiming-uniform with ``a = 1``, as in the reference.

Levels: student and teacher stages after the stem, aligned from the deepest when their numbers
differ, plus the embeddings: for resnet32x4 -> resnet8x4, ABFs 64->64, 128->128, 256->256 and
256->256 channels (mid 256); for resnet32x4 -> ShuffleV2, 116->64, 232->128, 464->256 and
1024->256 (mid 512), the student's 16/8/4/1 maps resized to the teacher's 32/16/8/1 — the
configurations of the authors' ``build_review_kd`` and of mdistiller's config.

The teacher's pre-activation maps come from the distiller (``needs_preact``: the tensors the zoo
names in ``preact_names``); a teacher naming none gives its post-activation stage maps. The
ABF modules belong to the method: trained, checkpointed and resumed with the student.

On detection the levels are the five FPN levels of student and teacher (strides 4..64, no stem
and no embedding: every level is paired, the deepest does not fuse), ``mid`` at most the
student's FPN channels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ckd.losses import hcl_loss
from ckd.methods.base import (
    METHODS,
    Batch,
    Method,
    MethodOptions,
    Outputs,
    Setup,
    aligned_stages,
)


@dataclasses.dataclass
class ReviewKDOptions(MethodOptions):
    # Defaults: mdistiller mdistiller/engine/cfg.py (REVIEWKD.CE_WEIGHT 1.0, REVIEWKD_WEIGHT 1.0,
    # WARMUP_EPOCHS 20, MAX_MID_CHANNEL 512, STU_PREACT False). Per pair the weight differs:
    # mdistiller configs/cifar100/reviewkd.yaml (resnet32x4 -> resnet8x4) sets 5.0, as the
    # authors' CIFAR-100/script/reviewKD.sh does for that pair (8.0 for resnet32x4 -> ShuffleV2).
    # Detection (the FPN levels): weight 1.0 (1.0-2.0 in the released recipes), no warm-up,
    # mid channels at most 256.
    TASK_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "detection": {"warmup_epochs": 0, "max_mid_channels": 256}
    }

    w_ce: float = 1.0
    w_reviewkd: float = 1.0
    # the term grows linearly to its weight over this many epochs, min((epoch + 1) / n, 1) for
    # the 0-based epoch (mdistiller's 1-based ``epoch / n``), or iterations; 0: no warm-up
    warmup_epochs: int = 20
    warmup_iters: int = 0
    max_mid_channels: int = 512

    def validate(self) -> None:
        super().validate()
        self.require(self.warmup_epochs >= 0, "warmup_epochs", ">= 0")
        self.require(self.warmup_iters >= 0, "warmup_iters", ">= 0")
        self.require(self.max_mid_channels >= 1, "max_mid_channels", ">= 1")


class ABF(nn.Module):
    """Attention-based fusion of one level: ``(student map, deeper result) -> (output at the
    teacher's size and channels, fused map passed to the next shallower level)``."""

    def __init__(self, c_in: int, mid: int, c_out: int, fuse: bool) -> None:
        super().__init__()
        conv1 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.conv1 = nn.Sequential(conv1, nn.BatchNorm2d(mid))
        conv2 = nn.Conv2d(mid, c_out, 3, padding=1, bias=False)
        self.conv2 = nn.Sequential(conv2, nn.BatchNorm2d(c_out))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(conv1.weight, a=1)
        nn.init.kaiming_uniform_(conv2.weight, a=1)

    def forward(
        self, x: torch.Tensor, deeper: torch.Tensor | None, out_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            if deeper is None:
                raise ValueError("a fusing ABF needs the deeper level's result")
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            att = self.att_conv(torch.cat([x, deeper], dim=1))
            x = x * att[:, 0:1] + deeper * att[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


@METHODS.register("reviewkd")
class ReviewKD(Method[ReviewKDOptions]):
    Options = ReviewKDOptions
    needs_features = True
    needs_preact = True  # the teacher's pre-ReLU maps
    tasks = ("classification", "detection")
    description = (
        "student levels fused deep-to-shallow by attention (ABF), matched to the teacher's "
        "pre-ReLU maps at several scales (HCL)"
    )
    paper = "Chen et al., Distilling Knowledge via Knowledge Review, CVPR 2021"

    def __init__(self, options: ReviewKDOptions, setup: Setup) -> None:
        super().__init__(options, setup)
        self.student_stages, self.teacher_stages = aligned_stages(setup, "reviewkd")
        s, t = setup.student, setup.teacher
        assert s is not None and t is not None
        # the pooled embeddings are the deepest level when both networks have one
        self.embeddings = s.embedding is not None and t.embedding is not None
        c_in = [s.feats[i][0] for i in self.student_stages]
        c_out = [t.feats[j][0] for j in self.teacher_stages]
        if s.embedding is not None and t.embedding is not None:  # self.embeddings
            c_in.append(s.embedding)
            c_out.append(t.embedding)
        mid = min(options.max_mid_channels, c_in[-1])
        # shallow to deep; the deepest does not fuse
        self.abfs = nn.ModuleList(
            ABF(ci, mid, co, fuse=k < len(c_in) - 1)
            for k, (ci, co) in enumerate(zip(c_in, c_out, strict=True))
        )

    def levels(
        self, out: Outputs, maps: tuple[torch.Tensor, ...], stages: list[int]
    ) -> list[torch.Tensor]:
        """The levels of one network, shallow to deep: its paired maps, then its pooled
        embedding as a ``1x1`` map."""
        levels = [maps[i] for i in stages]
        if self.embeddings:
            assert out.embedding is not None
            levels.append(out.embedding[:, :, None, None])
        return levels

    def fused(self, b: Batch) -> list[torch.Tensor]:
        """The ABF outputs, shallow to deep, each of its teacher level's shape."""
        levels = self.levels(b.student, b.student.feats, self.student_stages)
        sizes = [
            tuple(m.shape[-2:])
            for m in self.levels(b.teacher, b.teacher.feats, self.teacher_stages)
        ]
        outputs: list[torch.Tensor] = []
        deeper = None
        for k in reversed(range(len(levels))):
            out, deeper = self.abfs[k](levels[k], deeper, sizes[k])
            outputs.insert(0, out)
        return outputs

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        teacher = self.levels(b.teacher, b.teacher.preact, self.teacher_stages)
        term = hcl_loss(self.fused(b), teacher)
        return {"reviewkd": b.warmup(o.warmup_epochs, o.warmup_iters) * o.w_reviewkd * term}
