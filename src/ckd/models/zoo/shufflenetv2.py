"""ShuffleNetV2 (1x) for 32x32 inputs, as in the RepDistiller / mdistiller zoo.

Input [B, C, 32, 32] -> 1x1 stem conv-BN-ReLU [B, 24, 32, 32] -> layer1..layer3
[B, 116, 16, 16], [B, 232, 8, 8], [B, 464, 4, 4] (a stride-2 down unit, then n basic units)
-> 1x1 conv-BN-ReLU [B, 1024, 4, 4] -> 4x4 average pool [B, 1024] -> ``linear`` logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ckd.models.zoo.common import MODELS, ZooModel, channel_shuffle


class BasicUnit(nn.Module):
    """Split channels in half; the second half goes through 1x1-BN-ReLU, 3x3 depthwise-BN,
    1x1-BN-ReLU; concat with the untouched first half and shuffle (2 groups).

    With ``tap`` (the last unit of a stage), the parameter-free ``preact`` module sees the
    reference's pre-activation ``[first half, last BN output]`` (concatenated, not shuffled), for
    forward hooks (OFD, ReviewKD); it does not change the output.
    """

    def __init__(self, channels: int, tap: bool = False) -> None:
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.preact = nn.Identity() if tap else None

    def forward(self, x: Tensor) -> Tensor:
        keep, y = x.split(x.shape[1] // 2, dim=1)
        y = F.relu(self.bn1(self.conv1(y)))
        y = self.bn2(self.conv2(y))
        y = self.bn3(self.conv3(y))
        if self.preact is not None:
            self.preact(torch.cat([keep, y], 1))
        y = F.relu(y)
        return channel_shuffle(torch.cat([keep, y], 1), 2)


class DownUnit(nn.Module):
    """Two stride-2 branches on the same input, each ending with cout/2 channels:
    left 3x3 depthwise-BN, 1x1-BN-ReLU; right 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU.
    Concat and shuffle (2 groups)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, stride=2, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(ZooModel):
    """Features: stem ReLU, then the outputs of layer1..layer3."""

    stage_names = ("relu", "layer1", "layer2", "layer3")
    classifier_name = "linear"

    def __init__(
        self,
        widths: tuple[int, int, int, int],
        repeats: tuple[int, int, int],
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        cin = 24
        stages = []
        for width, n in zip(widths[:3], repeats, strict=True):
            units = [DownUnit(cin, width), *(BasicUnit(width, tap=i == n - 1) for i in range(n))]
            stages.append(nn.Sequential(*units))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(cin, widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.avgpool = nn.AvgPool2d(4)
        self.linear = nn.Linear(widths[3], num_classes)
        # Pre-activation of each stage feature, aligned with stage_names (names only: no
        # parameters, no state-dict keys). Half of it has no BN before a ReLU, so there are no
        # preact_bn_names: as in the reference, ShuffleV2 cannot be an OFD teacher.
        taps = (f"layer{i + 1}.{n}.preact" for i, n in enumerate(repeats))  # their last units
        self.preact_names = ("relu:in", *taps)
        self.preact_bn_names: tuple[str, ...] = ()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(self.avgpool(x).flatten(1))


@MODELS.register("ShuffleV2")
def shuffle_v2(num_classes: int, in_channels: int) -> nn.Module:
    return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes, in_channels)
