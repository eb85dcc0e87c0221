"""CIFAR-100 and CIFAR-10 from a local folder, read without running code.

Layout expected under ``root`` (the standard python-version archives, extracted)::

    root/cifar-100-python/{train,test,meta}
    root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}

The batch files are pickles. They are read by :func:`ckd.data.safe_pickle.load_data_pickle`,
which admits only plain data and NumPy arrays of numbers, so no file can run code whatever it
holds. Before that, with ``verify=True`` (the default, and ``data.verify`` in a config) each
file read must match the md5 torchvision publishes for it; only data generated as a stand-in
(:func:`ckd.data.make_fake_cifar`) is read with ``verify=False``, which its caller says in
code or config: nothing inside a data folder changes what is checked.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets.utils import check_integrity
from torchvision.datasets.vision import VisionDataset

from ckd.data.base import (
    DATASETS,
    Builder,
    DataNotFoundError,
    DatasetInfo,
    DatasetSpec,
    download_into,
)
from ckd.data.safe_pickle import load_data_pickle
from ckd.data.transforms import cifar_transform
from ckd.errors import DataError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle",
    "bicycle", "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can",
    "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud",
    "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant",
    "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree",
    "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea",
    "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe",
    "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip

CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects",
    "large_carnivores", "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)  # fmt: skip

CIFAR100_INFO = DatasetInfo(
    name="cifar100",
    num_classes=100,
    in_channels=3,
    image_size=32,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    classes=CIFAR100_CLASSES,
)
CIFAR10_INFO = DatasetInfo(
    name="cifar10",
    num_classes=10,
    in_channels=3,
    image_size=32,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    classes=CIFAR10_CLASSES,
)


class _SafeCIFAR:
    """torchvision's CIFAR dataset (its file lists, md5s, ``__getitem__``), loaded through
    :func:`~ckd.data.safe_pickle.load_data_pickle` after each file's md5 is checked."""

    root: str  # set by torchvision's VisionDataset.__init__
    base_folder: str
    train_list: list[list[str]]
    test_list: list[list[str]]
    meta: dict[str, str]
    download: Callable[[], None]
    num_classes: int

    def __init__(
        self,
        root: str | Path,
        train: bool = True,
        transform: Callable[..., Any] | None = None,
        target_transform: Callable[..., Any] | None = None,
        download: bool = False,
        verify: bool = True,
    ) -> None:
        VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.train = train
        if download:
            offline = (
                f"offline, put the extracted python-version archive there ({self.base_folder}/) "
                "and set data.download=false"
            )
            with download_into(type(self).__name__.lower(), self.root, offline):
                self.download()  # torchvision's: fetches and checks the archive's md5, extracts
        folder = Path(self.root) / self.base_folder
        files = self.train_list if train else self.test_list
        entries = [self._read(folder / name, md5, verify) for name, md5 in files]
        label_key = "labels" if "labels" in entries[0] else "fine_labels"
        images, targets = [], []
        for (name, _), entry in zip(files, entries, strict=True):
            data, labels = entry.get("data"), entry.get(label_key)
            if not (
                isinstance(data, np.ndarray)
                and data.dtype == np.uint8
                and data.ndim == 2
                and data.shape[1] == 3072
                and isinstance(labels, list)
                and len(labels) == len(data)
                and all(type(y) is int and 0 <= y < self.num_classes for y in labels)
            ):
                raise DataError(
                    f"{folder / name}: not a CIFAR batch (expected uint8 data [N, 3072] and "
                    f"{label_key}: N ints in 0..{self.num_classes - 1})"
                )
            images.append(data)
            targets.extend(labels)
        self.data: Any = np.vstack(images).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        self.targets = targets
        meta = self._read(folder / self.meta["filename"], self.meta["md5"], verify)
        classes = meta.get(self.meta["key"])
        if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            raise DataError(f"{folder / self.meta['filename']}: no list of class names")
        self.classes = classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}

    @staticmethod
    def _read(path: Path, md5: str, verify: bool) -> dict[str, Any]:
        """A batch or meta file's dict (keys as ``str``), its md5 checked when ``verify``."""
        if verify and not check_integrity(str(path), md5):
            raise DataError(
                f"{path}: its md5 is not the published one of this CIFAR file (a corrupt, "
                "altered or different file); re-extract the archive (data.verify=false only "
                "for generated stand-in data)"
            )
        try:
            entry = load_data_pickle(path)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as e:
            raise DataError(f"{path}: not a CIFAR data file ({e or type(e).__name__})") from None
        if not isinstance(entry, dict):
            raise DataError(f"{path}: not a CIFAR data file (holds a {type(entry).__name__})")
        return entry


class CIFAR100(_SafeCIFAR, datasets.CIFAR100):
    """CIFAR-100 as torchvision's ``CIFAR100``, read by :class:`_SafeCIFAR`."""

    num_classes = 100


class CIFAR10(_SafeCIFAR, datasets.CIFAR10):
    """CIFAR-10 as torchvision's ``CIFAR10``, read by :class:`_SafeCIFAR`."""

    num_classes = 10


def _check_files(cls: type[_SafeCIFAR], name: str, root: str | None) -> Path:
    """Return ``root`` as a Path, or raise DataNotFoundError naming what is missing."""
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    layout = f"{cls.base_folder}/{{{','.join(files)}}}"
    fetch = "or set data.download=true to fetch it (online)"
    if root is None:
        raise DataNotFoundError(
            f"{name}: a data root is required: data.root=DIR, a folder containing {layout} "
            f"({fetch} into DIR)"
        )
    folder = Path(root).expanduser() / cls.base_folder
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataNotFoundError(
            f"{name}: no dataset at {folder} (missing {', '.join(missing)}); "
            f"expected ROOT/{layout}, the extracted python-version archive, {fetch}"
        )
    return Path(root).expanduser()


def _builder(cls: type[CIFAR100 | CIFAR10], info: DatasetInfo) -> Builder:
    def build(
        root: str | None,
        train: bool,
        augment: bool = True,
        download: bool = False,
        verify: bool = True,
    ) -> Dataset:
        if download and root is not None:
            path = Path(root).expanduser()
        else:
            path = _check_files(cls, info.name, root)
        tf = cifar_transform(info.mean, info.std, train, augment)
        return cls(str(path), train=train, transform=tf, download=download, verify=verify)

    build.__doc__ = f"Build {info.name}: items (image [3, 32, 32] float, target int)."
    return build


def _spec(cls: type[CIFAR100 | CIFAR10], info: DatasetInfo) -> DatasetSpec:
    def locate(root: str | None) -> None:
        _check_files(cls, info.name, root)

    return DatasetSpec(info, _builder(cls, info), locate=locate)


DATASETS.register("cifar100")(_spec(CIFAR100, CIFAR100_INFO))
DATASETS.register("cifar10")(_spec(CIFAR10, CIFAR10_INFO))
