"""CIFAR ResNets of depth 6n+2 (resnet8 ... resnet110, resnet8x4, resnet32x4).

Input [B, C, 32, 32] -> stem 3x3 conv [B, w0, 32, 32] -> three stages of n basic blocks
[B, w1, 32, 32], [B, w2, 16, 16], [B, w3, 8, 8] -> 8x8 average pool [B, w3] -> ``fc`` logits
[B, num_classes]. Widths (w0, w1, w2, w3) are (16, 16, 32, 64), or (32, 64, 128, 256) for the
"x4" models. Layer names and parameters match the RepDistiller / mdistiller zoo.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ckd.models.zoo.common import MODELS, ZooModel, init_conv_bn_


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus identity (or 1x1 conv-BN) shortcut, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        # parameter-free tap: its output is the block's pre-activation (hooked by OFD, ReviewKD)
        self.preact = nn.Identity()
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(self.preact(y + shortcut))


class CifarResNet(ZooModel):
    """ResNet for 32x32 inputs; features: stem ReLU, then the outputs of layer1..layer3."""

    stage_names = ("relu", "layer1", "layer2", "layer3")
    classifier_name = "fc"

    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = self._stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(widths[3], num_classes)
        # Pre-activation of each stage feature (the input of its final ReLU), aligned with
        # stage_names, and the BN before that ReLU (the reference's get_bn_before_relu, OFD's
        # margins). Names only: no parameters, no state-dict keys.
        self.preact_names = ("relu:in", *(f"layer{i}.{n - 1}.preact" for i in (1, 2, 3)))
        self.preact_bn_names = ("bn1", *(f"layer{i}.{n - 1}.bn2" for i in (1, 2, 3)))
        init_conv_bn_(self)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(cin, cout, stride)]
        layers += [BasicBlock(cout, cout) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


_SPECS: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    **{f"resnet{d}": (d, (16, 16, 32, 64)) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    @MODELS.register(name)
    def factory(num_classes: int, in_channels: int) -> nn.Module:
        return CifarResNet(depth, widths, num_classes, in_channels)


for _name, (_depth, _widths) in _SPECS.items():
    _register(_name, _depth, _widths)
