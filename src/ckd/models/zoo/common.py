"""Pieces shared by the zoo: the model registry, a base class and small layers.

Every zoo network maps an image batch ``x`` of shape [B, in_channels, 32, 32] to logits of
shape [B, num_classes]. Its ``stage_names`` are the dotted names (as in ``named_modules()``)
of the submodules whose outputs are the reference implementation's feature maps, shallow to
deep; its ``classifier_name`` is the final ``nn.Linear``, whose input is the pooled embedding
[B, D].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ckd.models.external import ModelRegistry

ModelFactory = Callable[[int, int], nn.Module]

#: name -> factory ``f(num_classes, in_channels) -> nn.Module``; also resolves ``tv:`` / ``timm:``
MODELS: ModelRegistry = ModelRegistry("model")


class ZooModel(nn.Module):
    """Base class of the zoo networks (adds the feature-tap names, no parameters)."""

    stage_names: tuple[str, ...] = ()
    classifier_name: str = ""


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave ``groups`` channel groups: [B, C, H, W] -> [B, C, H, W]."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ChannelShuffle(nn.Module):
    """Module form of :func:`channel_shuffle` (no parameters)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(x, self.groups)


@torch.no_grad()
def init_conv_bn_(module: nn.Module) -> None:
    """He-normal conv weights (fan_out = k*k*out_channels), zero conv bias, BN to (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
