"""MobileNetV1 (Howard et al., 2017) for ImageNet, the student of the ResNet50 -> MobileNetV1 pair
of the CRD/DKD/CKD ImageNet tables, with the layer names of those code bases' implementation
(``model.<i>`` blocks, ``fc``), so their checkpoints load.

[B, 3, 224, 224] -> [B, num_classes]; 4.23M parameters with 1000 classes. Stages (outputs at
1/4, 1/8, 1/16 and 1/32 of the input): blocks 3, 5, 11 and 13.
"""

from __future__ import annotations

from torch import Tensor, nn

from ckd.models.zoo.common import MODELS, ZooModel, init_conv_bn_


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def _conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 (+BN+ReLU) then pointwise 1x1 (+BN+ReLU)."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),  # not in place: its input is read as the pre-activation stage map
    )


#: (output channels, stride) of the 13 depthwise-separable blocks
_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


class MobileNetV1(ZooModel):
    stage_names = ("model.3", "model.5", "model.11", "model.13")
    classifier_name = "fc"

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        layers = [_conv_bn(in_channels, 32, 2)]
        cin = 32
        for cout, stride in _BLOCKS:
            layers.append(_conv_dw(cin, cout, stride))
            cin = cout
        self.model = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the reference's AvgPool2d(7) at 224x224
        self.fc = nn.Linear(1024, num_classes)
        # the stage maps before their last ReLU, and the BN feeding it (OFD-style methods)
        self.preact_names = tuple(f"{s}.5:in" for s in self.stage_names)
        self.preact_bn_names = tuple(f"{s}.4" for s in self.stage_names)
        init_conv_bn_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.model(x)).flatten(1))


@MODELS.register("MobileNetV1")
def mobilenet_v1(num_classes: int, in_channels: int) -> nn.Module:
    return MobileNetV1(num_classes, in_channels)
