"""VGG-BN networks for 32x32 inputs (vgg8, vgg11, vgg13, vgg16, vgg19; no FC stack).

Input [B, C, 32, 32] -> block0..block4 (3x3 conv+BN layers, ReLU between and after), with
2x2 max-pools after blocks 0-2: [B, 64, 32, 32], [B, 128, 16, 16], [B, 256, 8, 8],
[B, 512, 4, 4], [B, 512, 4, 4] -> global average pool [B, 512] -> ``classifier`` logits.
As in the reference, ``pool3`` is applied only to 64x64 inputs. Each block ends with a BN;
its ReLU lives in ``act0..act4`` (no parameters), whose outputs are the stage features.
Layer names and parameters match the RepDistiller / mdistiller ``vgg*_bn`` models.
"""

from __future__ import annotations

from torch import Tensor, nn

from ckd.models.zoo.common import MODELS, ZooModel, init_conv_bn_

_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _block(cin: int, widths: tuple[int, ...]) -> nn.Sequential:
    """conv3x3(bias)-BN, joined by ReLUs; the block ends with the last BN."""
    layers: list[nn.Module] = []
    for i, w in enumerate(widths):
        if i:
            layers.append(nn.ReLU(inplace=True))
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w)]
        cin = w
    return nn.Sequential(*layers)


class VGG(ZooModel):
    """Features: outputs of act0..act4 (each block's BN followed by ReLU)."""

    stage_names = ("act0", "act1", "act2", "act3", "act4")
    classifier_name = "classifier"

    def __init__(self, cfg: tuple[tuple[int, ...], ...], num_classes: int, in_channels: int):
        super().__init__()
        cins = (in_channels,) + tuple(widths[-1] for widths in cfg[:-1])
        self.block0 = _block(cins[0], cfg[0])
        self.block1 = _block(cins[1], cfg[1])
        self.block2 = _block(cins[2], cfg[2])
        self.block3 = _block(cins[3], cfg[3])
        self.block4 = _block(cins[4], cfg[4])
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        self.act0, self.act1, self.act2, self.act3, self.act4 = (nn.ReLU() for _ in range(5))
        # Pre-activation of each stage feature (the input of its ReLU act0..act4) and the BN
        # before that ReLU (each block's last layer; the reference's get_bn_before_relu, OFD's
        # margins), aligned with stage_names. Names only: no parameters, no state-dict keys.
        self.preact_names = tuple(f"act{i}:in" for i in range(5))
        blocks = (self.block0, self.block1, self.block2, self.block3, self.block4)
        self.preact_bn_names = tuple(f"block{i}.{len(b) - 1}" for i, b in enumerate(blocks))
        init_conv_bn_(self)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> Tensor:
        side = x.shape[2]
        x = self.pool0(self.act0(self.block0(x)))
        x = self.pool1(self.act1(self.block1(x)))
        x = self.pool2(self.act2(self.block2(x)))
        x = self.act3(self.block3(x))
        if side == 64:
            x = self.pool3(x)
        x = self.act4(self.block4(x))
        return self.classifier(self.pool4(x).flatten(1))


def _register(name: str) -> None:
    @MODELS.register(name)
    def factory(num_classes: int, in_channels: int) -> nn.Module:
        return VGG(_CONFIGS[name], num_classes, in_channels)


for _name in _CONFIGS:
    _register(_name)
