"""ImageNet-style ResNet18 / ResNet50 adapted to 32x32 inputs (3x3 stem, no max-pool).

Input [B, C, 32, 32] -> stem [B, 64, 32, 32] -> layer1..layer4
[B, 64e, 32, 32], [B, 128e, 16, 16], [B, 256e, 8, 8], [B, 512e, 4, 4] (e = 1 for ResNet18,
4 for ResNet50) -> global average pool [B, 512e] -> ``linear`` logits [B, num_classes].
Layer names and parameters match the RepDistiller / mdistiller ``resnetv2`` zoo.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ckd.models.zoo.common import MODELS, ZooModel, init_conv_bn_


def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Empty (identity) Sequential, or 1x1 conv + BN when the shape changes."""
    if stride == 1 and cin == cout:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, add shortcut, ReLU."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(cin, planes, stride)
        self.preact = nn.Identity()  # parameter-free tap on the pre-activation (OFD, ReviewKD)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(self.preact(y + self.shortcut(x)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, each with BN; add shortcut, ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)
        self.preact = nn.Identity()  # parameter-free tap on the pre-activation (OFD, ReviewKD)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(self.preact(y + self.shortcut(x)))


class ResNetV2(ZooModel):
    """Features: stem ReLU, then the outputs of layer1..layer4."""

    stage_names = ("relu", "layer1", "layer2", "layer3", "layer4")
    classifier_name = "linear"

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        cin = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True)):
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            blocks = []
            for s in strides:
                blocks.append(block(cin, planes, s))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)
        # Pre-activation of each stage feature (the input of its final ReLU), aligned with
        # stage_names, and the BN before that ReLU (the reference's get_bn_before_relu, OFD's
        # margins). Names only: no parameters, no state-dict keys.
        last = [f"layer{i + 1}.{n - 1}" for i, n in enumerate(num_blocks)]
        bn = "bn3" if block is Bottleneck else "bn2"
        self.preact_names = ("relu:in", *(f"{b}.preact" for b in last))
        self.preact_bn_names = ("bn1", *(f"{b}.{bn}" for b in last))
        init_conv_bn_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.avgpool(x).flatten(1))


@MODELS.register("ResNet18")
def resnet18(num_classes: int, in_channels: int) -> nn.Module:
    return ResNetV2(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


@MODELS.register("ResNet50")
def resnet50(num_classes: int, in_channels: int) -> nn.Module:
    return ResNetV2(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)
