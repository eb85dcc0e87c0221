"""MobileNetV2 for 32x32 inputs as used in the KD literature ("MobileNetV2" = mobile_half).

Expansion T = 6, width multiplier 0.5. Input [B, C, 32, 32] -> stride-2 stem ``conv1``
[B, 16, 16, 16] -> seven inverted-residual groups ``blocks.0..6`` with outputs
[B, 8, 16, 16], [B, 12, 16, 16], [B, 16, 8, 8], [B, 32, 4, 4], [B, 48, 4, 4],
[B, 80, 2, 2], [B, 160, 2, 2] -> 1x1 ``conv2`` [B, 1280, 2, 2] -> 2x2 average pool [B, 1280]
-> ``classifier.0`` logits. Layer names and parameters match RepDistiller / mdistiller.
"""

from __future__ import annotations

from torch import Tensor, nn

from ckd.models.zoo.common import MODELS, ZooModel, init_conv_bn_

# (expansion t, channels c, repeats n, first stride s); t = None means "use T"
_SETTINGS: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (``self.conv``);
    identity shortcut when stride is 1 and the width is unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return x + y if self.use_res_connect else y


class MobileNetV2(ZooModel):
    """Features: outputs of conv1, blocks.1, blocks.2, blocks.4 and blocks.6."""

    stage_names = ("conv1", "blocks.1", "blocks.2", "blocks.4", "blocks.6")
    classifier_name = "classifier.0"

    def __init__(
        self, expand: int, width: float, num_classes: int, in_channels: int, input_size: int = 32
    ) -> None:
        super().__init__()
        cin = int(32 * width)
        self.conv1 = _conv_bn_relu(in_channels, cin, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTINGS:
            cout = int(c * width)
            group = []
            for i in range(n):
                group.append(InvertedResidual(cin, cout, s if i == 0 else 1, t or expand))
                cin = cout
            self.blocks.append(nn.Sequential(*group))
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, last, 1, 1)
        head = nn.Linear(last, num_classes)
        self.classifier = nn.Sequential(head)
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)
        # Pre-activation of each stage feature, aligned with stage_names: the stem's ReLU input,
        # then the block groups' outputs themselves (linear bottlenecks, no ReLU after them), and
        # the BN that ends each (the reference's get_bn_before_relu, OFD's margins). Names only:
        # no parameters, no state-dict keys.
        self.preact_names = ("conv1.2:in", *self.stage_names[1:])
        self.preact_bn_names = (
            "conv1.1",
            *(
                f"{g}.{len(list(self.get_submodule(g).children())) - 1}.conv.7"
                for g in self.stage_names[1:]
            ),
        )
        init_conv_bn_(self)
        nn.init.normal_(head.weight, 0.0, 0.01)
        nn.init.zeros_(head.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        x = self.avgpool(self.conv2(x))
        return self.classifier(x.flatten(1))


@MODELS.register("MobileNetV2")
def mobile_half(num_classes: int, in_channels: int) -> nn.Module:
    return MobileNetV2(6, 0.5, num_classes, in_channels)
