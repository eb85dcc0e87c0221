"""ShuffleNetV1 (g = 3) for 32x32 inputs, as in the RepDistiller / mdistiller zoo.

Input [B, C, 32, 32] -> 1x1 stem conv-BN-ReLU [B, 24, 32, 32] -> layer1..layer3
[B, 240, 16, 16], [B, 480, 8, 8], [B, 960, 4, 4] (each starts with a stride-2 unit whose
output concatenates an average-pooled shortcut) -> 4x4 average pool [B, 960] -> ``linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ckd.models.zoo.common import MODELS, ChannelShuffle, ZooModel


class ShuffleUnit(nn.Module):
    """Grouped 1x1 conv-BN-ReLU, channel shuffle, 3x3 depthwise conv-BN-ReLU, grouped 1x1
    conv-BN; stride 2: concat with a 3x3/2 average-pooled input, else add it; then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = cout // 4
        g_in = 1 if cin == 24 else groups  # the stem output is not grouped
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=g_in, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle1 = ChannelShuffle(g_in)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.preact = nn.Identity()  # parameter-free tap on the pre-activation (OFD, ReviewKD)

    def forward(self, x: Tensor) -> Tensor:
        y = self.shuffle1(F.relu(self.bn1(self.conv1(x))))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        res = self.shortcut(x)
        return F.relu(self.preact(torch.cat([y, res], 1) if self.stride == 2 else y + res))


class ShuffleNetV1(ZooModel):
    """Features: stem ReLU, then the outputs of layer1..layer3."""

    stage_names = ("relu", "layer1", "layer2", "layer3")
    classifier_name = "linear"

    def __init__(
        self,
        widths: tuple[int, int, int],
        repeats: tuple[int, int, int],
        groups: int,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        cin = 24
        stages = []
        for width, n in zip(widths, repeats, strict=True):
            # the first unit produces width - cin channels and concatenates the pooled input
            units = [ShuffleUnit(cin, width - cin, 2, groups)]
            units += [ShuffleUnit(width, width, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AvgPool2d(4)
        self.linear = nn.Linear(cin, num_classes)
        # Pre-activation of each stage feature (the input of its final ReLU), aligned with
        # stage_names, and the BN before that ReLU (the reference's get_bn_before_relu, OFD's
        # margins). Names only: no parameters, no state-dict keys.
        last = [f"layer{i + 1}.{n - 1}" for i, n in enumerate(repeats)]
        self.preact_names = ("relu:in", *(f"{b}.preact" for b in last))
        self.preact_bn_names = ("bn1", *(f"{b}.bn3" for b in last))

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x).flatten(1))


@MODELS.register("ShuffleV1")
def shuffle_v1(num_classes: int, in_channels: int) -> nn.Module:
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, num_classes, in_channels)
