"""The dataset layer: CIFAR-100, CIFAR-10 and Fashion-MNIST as 32x32 normalised tensors.

``build_dataset(name, root, train, augment, download)`` returns a dataset of
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
from ckd.data.subset import TargetSubset, subset
from ckd.data.synthetic import make_fake_cifar, make_fake_fashion_mnist

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "DATASETS",
    "FASHION_MNIST_SEARCH_PATHS",
    "DataNotFoundError",
    "DatasetInfo",
    "DatasetSpec",
    "FashionMNIST",
    "TargetSubset",
    "build_dataset",
    "dataset_info",
    "dataset_names",
    "make_fake_cifar",
    "make_fake_fashion_mnist",
    "subset",
]
