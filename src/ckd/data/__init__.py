"""The dataset layer: CIFAR-100, CIFAR-10 and Fashion-MNIST as 32x32 normalised tensors;
ImageNet-1K and Places365 from their folder layouts as 224x224 ones; ``folder``: your own
images, any classes and size (:mod:`ckd.data.folder`, resolved from the data config by
``resolve_dataset``).

``build_dataset(name, root, train, augment, download, verify)`` returns a dataset of
``(image [C, 32, 32] float32, target int)`` items with a ``.targets`` list;
``dataset_info(name)`` the facts models need; ``subset`` a class-balanced subset;
``make_fake_cifar`` / ``make_fake_fashion_mnist`` tiny offline stand-ins.
"""

from ckd.data.base import (
    DATASETS,
    DataNotFoundError,
    DatasetInfo,
    DatasetOptions,
    DatasetSpec,
    DataSource,
    build_dataset,
    dataset_info,
    dataset_names,
    resolve_dataset,
)
from ckd.data.cifar import CIFAR10, CIFAR100
from ckd.data.fashion_mnist import FASHION_MNIST_SEARCH_PATHS, FashionMNIST
from ckd.data.folder import FolderOptions, ImageFolderDataset, ImageReadError
from ckd.data.imagefolder import IMAGENET_INFO, PLACES365_INFO, imagenet_transform
from ckd.data.subset import TargetSubset, subset
from ckd.data.synthetic import make_fake_cifar, make_fake_fashion_mnist, make_fake_image_folder
from ckd.errors import DataError

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "DATASETS",
    "DataError",
    "FASHION_MNIST_SEARCH_PATHS",
    "DataNotFoundError",
    "DatasetInfo",
    "DatasetOptions",
    "DatasetSpec",
    "DataSource",
    "FashionMNIST",
    "FolderOptions",
    "IMAGENET_INFO",
    "ImageFolderDataset",
    "ImageReadError",
    "PLACES365_INFO",
    "TargetSubset",
    "build_dataset",
    "dataset_info",
    "dataset_names",
    "imagenet_transform",
    "make_fake_cifar",
    "make_fake_fashion_mnist",
    "make_fake_image_folder",
    "resolve_dataset",
    "subset",
]
