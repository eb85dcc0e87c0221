"""The dataset layer: CIFAR-100, CIFAR-10 and Fashion-MNIST as 32x32 normalised tensors;
ImageNet-1K and Places365 from their folder layouts as 224x224 ones.

``build_dataset(name, root, train, augment, download, verify)`` returns a dataset of
``(image [C, 32, 32] float32, target int)`` items with a ``.targets`` list;
``dataset_info(name)`` the facts models need; ``subset`` a class-balanced subset;
``make_fake_cifar`` / ``make_fake_fashion_mnist`` tiny offline stand-ins.
"""

from ckd.data.base import (
    DATASETS,
    DataNotFoundError,
    DatasetInfo,
    DatasetSpec,
    build_dataset,
    dataset_info,
    dataset_names,
)
from ckd.data.cifar import CIFAR10, CIFAR100
from ckd.data.fashion_mnist import FASHION_MNIST_SEARCH_PATHS, FashionMNIST
from ckd.data.imagefolder import IMAGENET_INFO, PLACES365_INFO, imagenet_transform
from ckd.data.subset import TargetSubset, subset
from ckd.data.synthetic import make_fake_cifar, make_fake_fashion_mnist
from ckd.errors import DataError

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "DATASETS",
    "DataError",
    "FASHION_MNIST_SEARCH_PATHS",
    "DataNotFoundError",
    "DatasetInfo",
    "DatasetSpec",
    "FashionMNIST",
    "IMAGENET_INFO",
    "PLACES365_INFO",
    "TargetSubset",
    "build_dataset",
    "dataset_info",
    "dataset_names",
    "imagenet_transform",
    "make_fake_cifar",
    "make_fake_fashion_mnist",
    "subset",
]
