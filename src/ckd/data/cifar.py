"""CIFAR-100 and CIFAR-10 through torchvision, from a local folder.

Layout expected under ``root`` (the standard python-version archives, extracted)::

    root/cifar-100-python/{train,test,meta}
    root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}

torchvision checks every file's md5 before loading. Folders written by
:func:`ckd.data.make_fake_cifar` contain a marker file (:data:`SYNTHETIC_MARKER`);
for those only, :class:`CIFAR100`/:class:`CIFAR10` here ask torchvision to check that
the files exist but not their md5 (its ``check_integrity(path, md5=None)``). Real
folders never contain the marker and keep the full md5 check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from torchvision import datasets

from ckd.data.base import DATASETS, Builder, DataNotFoundError, DatasetInfo, DatasetSpec
from ckd.data.transforms import cifar_transform

#: File written by the synthetic generator inside the CIFAR folder; see module doc.
SYNTHETIC_MARKER = "CKD_SYNTHETIC"

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


class _SkipMd5ForSynthetic:
    """Mixin: drop the md5s (keep the existence checks) for marked synthetic folders."""

    base_folder: str
    train_list: list[list[Any]]
    test_list: list[list[Any]]
    meta: dict[str, Any]

    def __init__(self, root: str | Path, *args: Any, **kwargs: Any) -> None:
        if (Path(root) / self.base_folder / SYNTHETIC_MARKER).is_file():
            # instance attributes shadow the class-level lists torchvision reads
            self.train_list = [[name, None] for name, _ in type(self).train_list]
            self.test_list = [[name, None] for name, _ in type(self).test_list]
            self.meta = {**type(self).meta, "md5": None}
        super().__init__(root, *args, **kwargs)  # type: ignore[call-arg]


class CIFAR100(_SkipMd5ForSynthetic, datasets.CIFAR100):
    """torchvision's CIFAR100; md5 check skipped only for synthetic folders."""


class CIFAR10(_SkipMd5ForSynthetic, datasets.CIFAR10):
    """torchvision's CIFAR10; md5 check skipped only for synthetic folders."""


def _check_files(cls: type[datasets.CIFAR10], name: str, root: str | None) -> Path:
    """Return ``root`` as a Path, or raise DataNotFoundError naming what is missing."""
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    layout = f"{cls.base_folder}/{{{','.join(files)}}}"
    if root is None:
        raise DataNotFoundError(f"{name}: a data root is required (a folder containing {layout})")
    folder = Path(root).expanduser() / cls.base_folder
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataNotFoundError(
            f"{name}: no dataset at {folder} (missing {', '.join(missing)}); "
            f"expected ROOT/{layout}, the extracted python-version archive"
        )
    return Path(root).expanduser()


def _builder(cls: type[datasets.CIFAR10], info: DatasetInfo) -> Builder:
    def build(
        root: str | None, train: bool, augment: bool = True, download: bool = False
    ) -> Dataset:
        if download and root is not None:
            path = Path(root).expanduser()
        else:
            path = _check_files(cls, info.name, root)
        tf = cifar_transform(info.mean, info.std, train, augment)
        return cls(str(path), train=train, transform=tf, download=download)

    build.__doc__ = f"Build {info.name}: items (image [3, 32, 32] float, target int)."
    return build


DATASETS.register("cifar100")(DatasetSpec(CIFAR100_INFO, _builder(CIFAR100, CIFAR100_INFO)))
DATASETS.register("cifar10")(DatasetSpec(CIFAR10_INFO, _builder(CIFAR10, CIFAR10_INFO)))
