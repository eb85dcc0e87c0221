"""Fashion-MNIST from its IDX files, padded to 32x32 so the CIFAR models run unchanged.

Where the files are looked for, in order:

1. the ``root`` the caller gives, and then nowhere else (a root without the files is an
   error, never a silent switch to another copy);
2. without a root: each folder of :data:`FASHION_MNIST_SEARCH_PATHS` (Debian's
   ``dataset-fashion-mnist`` package installs the four ``.gz`` files flat in
   ``/usr/share/datasets/fashion-mnist``);
3. only with ``download=True``: a torchvision download into ``root or ./data``.

In each folder the files may be flat or in torchvision's ``FashionMNIST/raw/`` (or
``raw/``) sub-folder, gzipped or not. They are read by :mod:`ckd.data.idx` into uint8
tensors held in memory, so no torchvision folder convention or md5 is involved.

Images are 28x28 with a 0 (black) background. Each is zero-padded by 2 pixels per
side to 32x32 *before* normalisation, so the padding equals the background value;
see :func:`ckd.data.transforms.fashion_mnist_transform` for the augmentation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ckd.data.base import DATASETS, DataNotFoundError, DatasetInfo, DatasetSpec, download_into
from ckd.data.idx import read_idx
from ckd.data.transforms import Transform, fashion_mnist_transform
from ckd.errors import DataError

#: Folders searched after the caller's root; tests may replace this tuple.
FASHION_MNIST_SEARCH_PATHS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)
#: Sub-folders tried inside each searched folder ("" is the folder itself).
_SUBDIRS = ("", "FashionMNIST/raw", "raw")

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# Mean/std of the *padded* 32x32 training images (what the model sees), computed once
# from the real 60000 training images (Debian package) as the mean and the population
# std over all pixels of np.pad(images / 255, 2): 0.21900, 0.33181. (Over the raw
# 28x28 images the same computation gives the commonly quoted 0.2860, 0.3530.)
FASHION_MNIST_INFO = DatasetInfo(
    name="fashion_mnist",
    num_classes=10,
    in_channels=1,
    image_size=32,
    mean=(0.2190,),
    std=(0.3318,),
    classes=FASHION_MNIST_CLASSES,
)


def split_files(train: bool) -> tuple[str, str]:
    """The IDX file names (without ``.gz``) of a split: ``(images, labels)``."""
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_in(folder: Path, names: tuple[str, str]) -> tuple[Path, Path] | None:
    found = []
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            return None
    return found[0], found[1]


def locate_fashion_mnist(
    root: str | Path | None,
    train: bool,
    search_paths: tuple[str | Path, ...] | None = None,
) -> tuple[tuple[Path, Path] | None, list[Path]]:
    """Look for a split's ``(images, labels)`` files in ``root``, or without one in
    ``search_paths``.

    ``search_paths`` defaults to :data:`FASHION_MNIST_SEARCH_PATHS` (read at call
    time). Returns ``(paths or None, folders tried in order)``.
    """
    paths = FASHION_MNIST_SEARCH_PATHS if search_paths is None else search_paths
    bases = [Path(root).expanduser()] if root is not None else [Path(p) for p in paths]
    tried: list[Path] = []
    for base in bases:
        for sub in _SUBDIRS:
            folder = base / sub if sub else base
            tried.append(folder)
            found = _find_in(folder, split_files(train))
            if found is not None:
                return found, tried
    return None, tried


def not_found(train: bool, tried: list[Path]) -> DataNotFoundError:
    """The one line saying that a split's files are not in the folders ``tried``."""
    names = " + ".join(f"{n}[.gz]" for n in split_files(train))
    return DataNotFoundError(
        f"fashion_mnist: {names} not found; tried {', '.join(map(str, tried))}; give "
        "data.root=DIR holding the IDX files, install Debian's dataset-fashion-mnist, or set "
        "data.download=true to fetch them (online)"
    )


def locate(root: str | None) -> None:
    """Raise :func:`not_found` when a split's files are not where they are looked for."""
    for train in (True, False):
        found, tried = locate_fashion_mnist(root, train)
        if found is None:
            raise not_found(train, tried)


def _download(root: Path, train: bool) -> None:
    from torchvision import datasets

    datasets.FashionMNIST(str(root), train=train, download=True)


def load_fashion_mnist(
    root: str | Path | None,
    train: bool,
    download: bool = False,
    search_paths: tuple[str | Path, ...] | None = None,
) -> tuple[Tensor, list[int], Path]:
    """Load a split as ``(images uint8 [N, 28, 28], targets, folder it came from)``.

    Raises:
        DataNotFoundError: one line listing every folder tried (and the download
            error, if a download was asked for and failed).
        DataError: a file is truncated, corrupt or not Fashion-MNIST's.
    """
    found, tried = locate_fashion_mnist(root, train, search_paths)
    if found is None and download:
        target = Path(root).expanduser() if root is not None else Path("data")
        offline = "offline, give data.root=DIR holding the IDX files and data.download=false"
        with download_into("fashion_mnist", target, offline):
            _download(target, train)
        found, more = locate_fashion_mnist(target, train, search_paths=())
        tried += [p for p in more if p not in tried]
    if found is None:
        raise not_found(train, tried)
    images, labels = read_idx(found[0]), read_idx(found[1])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise DataError(
            f"fashion_mnist: {found[0]} {list(images.shape)} and {found[1]} "
            f"{list(labels.shape)} are not matching [N, 28, 28] images and [N] labels"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(
            f"fashion_mnist: {found[1]} holds label {labels.max()}; labels are 0..9 "
            "(a corrupt file)"
        )
    return torch.from_numpy(images), labels.astype(np.int64).tolist(), found[0].parent


class FashionMNIST(Dataset):
    """Fashion-MNIST held in memory; items are ``(image [1, 32, 32] float, target int)``.

    Attributes:
        data: uint8 tensor ``[N, 28, 28]`` (unpadded, as stored).
        targets: list of ``N`` ints in ``0..9``.
        classes: the 10 class names.
        source: the folder the IDX files were read from.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        train: bool = True,
        augment: bool = True,
        download: bool = False,
        search_paths: tuple[str | Path, ...] | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.data, self.targets, self.source = load_fashion_mnist(
            root, train, download, search_paths
        )
        self.train = train
        self.classes = FASHION_MNIST_CLASSES
        info = FASHION_MNIST_INFO
        self.transform = transform or fashion_mnist_transform(info.mean, info.std, train, augment)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.data[index].unsqueeze(0)), self.targets[index]


def _build(
    root: str | None,
    train: bool,
    augment: bool = True,
    download: bool = False,
    verify: bool = True,
) -> Dataset:
    """Build Fashion-MNIST: items (image [1, 32, 32] float, target int). Every file is checked
    as it is read (gzip's CRC, the IDX header against the size, labels in 0..9) whatever
    ``verify`` says: the files have no published checksums that all copies share."""
    return FashionMNIST(root, train=train, augment=augment, download=download)


DATASETS.register("fashion_mnist")(DatasetSpec(FASHION_MNIST_INFO, _build, locate=locate))
