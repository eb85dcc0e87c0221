"""Wide ResNets WRN-d-k (pre-activation blocks) for 32x32 inputs.

Input [B, C, 32, 32] -> stem conv [B, 16, 32, 32] -> block1..block3 of n = (d-4)/6 blocks
[B, 16k, 32, 32], [B, 32k, 16, 16], [B, 64k, 8, 8] -> BN-ReLU, 8x8 average pool [B, 64k]
-> ``fc`` logits [B, num_classes]. Layer names and parameters match the RepDistiller /
mdistiller zoo. As in that zoo, the stage features are the raw block sums (a block's output is
not activated); their pre-activation maps (``preact_names``) are those sums after the BN that next
normalises them before a ReLU: the first block of the next stage's ``bn1``, and the final ``bn1``
for the last stage (the reference's ``preact_feats``, from which OFD's margins are computed).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ckd.models.zoo.common import MODELS, ZooModel, init_conv_bn_


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus identity or 1x1-conv shortcut.

    When the width changes, the shortcut conv reads the pre-activated input. The ReLUs are not
    in place: ``bn1``'s output is a pre-activation tap (read by a forward hook), which an
    in-place ReLU would overwrite with its activation.
    """

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.convShortcut: nn.Conv2d | None = None
        if cin != cout:
            self.convShortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a = self.relu1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(a)
        y = self.relu2(self.bn2(self.conv1(a)))
        if self.drop_rate > 0:
            y = F.dropout(y, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(y)


class WideStage(nn.Module):
    """``n`` wide blocks held in ``self.layer`` (the reference's key prefix)."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        blocks = [WideBlock(cin, cout, stride, drop_rate)]
        blocks += [WideBlock(cout, cout, 1, drop_rate) for _ in range(n - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(ZooModel):
    """Features: the stem conv output, then the outputs of block1..block3."""

    stage_names = ("conv1", "block1", "block2", "block3")
    classifier_name = "fc"

    def __init__(
        self,
        depth: int,
        widen: int,
        num_classes: int,
        in_channels: int,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        w = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, padding=1, bias=False)
        self.block1 = WideStage(n, w[0], w[1], 1, drop_rate)
        self.block2 = WideStage(n, w[1], w[2], 2, drop_rate)
        self.block3 = WideStage(n, w[2], w[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(w[3])
        self.relu = nn.ReLU()  # not in place: bn1's output is the last stage's pre-activation tap
        self.fc = nn.Linear(w[3], num_classes)
        # The BN that next normalises each stage feature before a ReLU (the reference's
        # get_bn_before_relu, OFD's margins), aligned with stage_names; its output is the stage's
        # pre-activation map (the reference's preact_feats[1:]; its [0] repeats the stem conv's
        # output, which no method reads). Names only: no parameters, no state-dict keys.
        self.preact_bn_names = (*(f"block{i}.layer.0.bn1" for i in (1, 2, 3)), "bn1")
        self.preact_names = self.preact_bn_names
        init_conv_bn_(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.avg_pool2d(self.relu(self.bn1(x)), 8)
        return self.fc(x.flatten(1))


def _register(name: str, depth: int, widen: int) -> None:
    @MODELS.register(name)
    def factory(num_classes: int, in_channels: int) -> nn.Module:
        return WideResNet(depth, widen, num_classes, in_channels)


# the reference zoo's WRNs (mdistiller / the CKD code: wrn_16_4, wrn_28_2 and wrn_28_4 beside the
# RepDistiller four)
for _depth, _widen in ((16, 1), (16, 2), (16, 4), (28, 2), (28, 4), (40, 1), (40, 2)):
    _register(f"wrn_{_depth}_{_widen}", _depth, _widen)
