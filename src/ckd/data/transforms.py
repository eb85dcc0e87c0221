"""Per-dataset image transforms.

CIFAR items come from torchvision as PIL images (``[32, 32, 3]`` uint8); Fashion-MNIST
items are uint8 tensors ``[1, 28, 28]``. Both end as normalised float ``[C, 32, 32]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision import transforms as T

Transform = Callable[..., Tensor]

#: Zero-padding that turns a 28x28 Fashion-MNIST image into a 32x32 one (each side).
FASHION_MNIST_PAD = 2


def cifar_transform(
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    augment: bool,
    size: int = 32,
    padding: int = 4,
) -> Transform:
    """PIL ``[size, size, C]`` -> float ``[C, size, size]`` (CIFAR: 32, padding 4).

    Training with ``augment``: ``RandomCrop(size, padding=padding)`` (zero padding) and
    ``RandomHorizontalFlip``; always ``ToTensor`` and ``Normalize(mean, std)``.
    """
    steps: list[Callable] = []
    if train and augment:
        steps += [T.RandomCrop(size, padding=padding), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(steps)


def _to_float(img: Tensor) -> Tensor:
    """uint8 ``[C, H, W]`` in 0..255 -> float32 in [0, 1]."""
    return img.to(torch.float32).div_(255.0)


def fashion_mnist_transform(
    mean: Sequence[float], std: Sequence[float], train: bool, augment: bool
) -> Transform:
    """uint8 ``[1, 28, 28]`` -> float ``[1, 32, 32]``.

    The uint8 image is first zero-padded by 2 pixels on each side (0 is the
    Fashion-MNIST background), so the padding normalises to the background value
    ``-mean/std`` like the real border, and the CIFAR models run unchanged.
    Training with ``augment``: ``RandomCrop(32, padding=2)`` on the padded image
    (shifts of up to 2 pixels, filled with background 0) and
    ``RandomHorizontalFlip``. Then scale to [0, 1] and ``Normalize(mean, std)``.
    """
    steps: list[Callable] = [T.Pad(FASHION_MNIST_PAD, fill=0)]
    if train and augment:
        steps += [T.RandomCrop(32, padding=2, fill=0), T.RandomHorizontalFlip()]
    steps += [_to_float, T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(steps)
