"""Your own images: ``data.name: folder`` reads any class-per-folder image tree.

Layout (any number of classes, any image size and format PIL reads)::

    root/train/<class>/**/*.{jpg,jpeg,png,bmp,ppm,pgm,tif,tiff,webp}
    root/val/<class>/**/*...            (optional: see data.val_fraction)

The classes are the sub-folders of ``root/train``, sorted by name (class ``i`` is the ``i``-th
name); ``root/val`` may lack some of them but may not name others. Without ``root/val``,
``data.val_fraction`` holds out that fraction of every class of ``root/train`` as the test split
(stratified: ``round(fraction * n)`` images of a class of ``n``, at least one and never all,
drawn with the fixed seed :data:`SPLIT_SEED`, so every run and seed tests on the same images).

What the data config decides (each also has a default):

- ``data.image_size`` (the side ``S`` of the square model input; null: 224 when the first
  training image's shorter side is over :data:`SMALL_MAX` pixels, else 32). It picks the
  augmentation: up to :data:`SMALL_MAX` px the CIFAR style (resize the shorter side to ``S``,
  centre crop ``S``; training adds a ``S/8`` zero-padded random crop and a flip), above it the
  ImageNet style (training: ``RandomResizedCrop(S)`` + flip; test: resize ``S * 8/7``, centre
  crop). Why 64: ``RandomResizedCrop`` keeps as little as 8% of the image, which on a 32 or
  64 px image leaves a few pixels of the object, so the small-image recipes (CIFAR at 32,
  Tiny-ImageNet at 64) use padded random crops instead; ImageNet-style recipes start at 96+.
- ``data.channels`` (1 greyscale or 3 RGB; null: 1 when the first image of each of up to 16
  classes is greyscale, else 3). Every image is converted to it.
- ``data.mean`` / ``data.std`` (null: ImageNet's, which torchvision's and most timm pretrained
  weights expect, or their average (0.449, 0.226) for one channel; models trained from scratch
  with batch norm are insensitive to the choice). Give your own for other statistics.

Both input paths read it: the standard one decodes files in DataLoader workers; the fast one
(``data.loader=fast``, CIFAR style only) decodes every image once into a uint8 tensor held in
memory, refusing when that needs more than half of the free memory. A file that cannot be
decoded stops the run with one line naming it (:class:`ImageReadError`).

Why over 400 lines: one dataset's layout scan, class and validation split, channel and size
inference, its two augmentation styles and its in-memory decoding, each short and each reading the
others' results.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T

from ckd.data.base import DATASETS, DataNotFoundError, DatasetInfo, DatasetOptions, DatasetSpec
from ckd.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, imagenet_transform
from ckd.data.transforms import cifar_transform
from ckd.errors import ConfigError, DataError, one_line, require, show, show_path

NAME = "folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
#: Largest ``image_size`` that gets the CIFAR-style augmentation (see the module doc).
SMALL_MAX = 64
#: Seed of the ``val_fraction`` hold-out draw: fixed, so that runs of any seed share a test set.
SPLIT_SEED = 0
#: Greyscale normalisation: the average of ImageNet's three channels.
GREY_MEAN, GREY_STD = (0.449,), (0.226,)
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_CHANNEL_PROBES = 16
LAYOUT = "ROOT/train/<class>/<images> (and ROOT/val/<class>/<images> or data.val_fraction)"


class ImageReadError(ConfigError):
    """An image file cannot be decoded; the message (one line) names it.

    Raised in a DataLoader worker, torch re-raises it in the main process with the worker's
    traceback as the message: ``str()`` then gives back the original line.
    """

    def __str__(self) -> str:
        text = super().__str__()
        if "\nOriginal Traceback" in text:  # re-raised by a DataLoader worker
            last = text.rstrip().splitlines()[-1]
            text = last.split(f"{type(self).__name__}: ", 1)[-1]
        return text


#: What PIL raises for a file it cannot decode (a missing, truncated, or non-image file).
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def unreadable(path: str | Path, error: BaseException) -> ImageReadError:
    """The one-line error for an image PIL could not decode."""
    return ImageReadError(f"{NAME}: cannot read image {show_path(path)}: {one_line(error, 300)}")


def read_image(path: str | Path, mode: str) -> Image.Image:
    """The image at ``path`` converted to PIL ``mode`` (``L`` or ``RGB``), fully decoded.

    Raises:
        ImageReadError: the file is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as img:
            return img.convert(mode)  # convert() loads the pixels: a truncated file fails here
    except UNREADABLE as e:
        raise unreadable(path, e) from None


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def class_folders(split: Path) -> list[str]:
    """The class sub-folder names of ``split``, sorted (hidden ones left out)."""
    return sorted(p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))


class FolderScan:
    """The walk of a dataset's splits, under its rule for symbolic links (:data:`LINK_RULE`).

    Every real folder is entered once, whichever path leads to it, so each real image is listed
    once (the first path in sorted order that reaches it names it) and no walk can loop. A link
    to a folder the link is inside of (``ln -s . x``, ``ln -s .. x``, ``ln -s / x``) is refused,
    as is an image reached from two classes or from both splits (a training image in the test
    set); a dangling link named like an image is refused too.
    """

    def __init__(self) -> None:
        #: real folder -> (split, class, the path that led to it)
        self.folders: dict[str, tuple[str, str, str]] = {}
        #: real file reached through a link to a file -> (split, class, the link)
        self.linked: dict[str, tuple[str, str, str]] = {}

    def _claim(
        self, table: dict[str, tuple[str, str, str]], real: str, owner: tuple[str, str, str]
    ) -> bool:
        """Record ``real`` for ``owner``: True the first time, False when the same class of the
        same split reached it before; a clash with another class or split is a DataError."""
        held = table.setdefault(real, owner)
        if held is owner:
            return True
        if held[:2] == owner[:2]:
            return False
        raise DataError(_clash(owner, held, real))

    def split(self, split: Path, classes: Sequence[str]) -> tuple[list[str], list[int]]:
        """``(paths, targets)`` of the images under ``split/<class>/`` (recursively, each
        folder's images in sorted order, then its sub-folders), class ``i`` = ``classes[i]``.

        Raises:
            DataNotFoundError: a class folder of ``split`` is not in ``classes``, or one holds
                no image.
            DataError: a link the rule refuses, or a folder that cannot be listed.
        """
        index = {c: i for i, c in enumerate(classes)}
        paths: list[str] = []
        targets: list[int] = []
        for name in class_folders(split):
            if name not in index:
                raise DataNotFoundError(
                    f"{NAME}: {show_path(split / name)} is not a class of the training folder "
                    f"(its {len(classes)} classes: {', '.join(classes[:8])}"
                    f"{', ...' if len(classes) > 8 else ''})"
                )
            if (split / name).is_symlink():
                self._check_link(str(split / name), os.path.realpath(split))
            found = self._walk(split / name, (split.name, name, ""))
            if not found:
                raise DataNotFoundError(
                    f"{NAME}: class folder {show_path(split / name)} holds no image "
                    f"({', '.join(IMAGE_EXTENSIONS)})"
                )
            paths += found
            targets += [index[name]] * len(found)
        return paths, targets

    def _walk(self, top: Path, owner: tuple[str, str, str]) -> list[str]:
        found: list[str] = []
        stack = [str(top)]
        while stack:
            folder = stack.pop()
            real = os.path.realpath(folder)
            if not self._claim(self.folders, real, (*owner[:2], folder)):
                continue  # reached before by this class: its images are listed already
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                raise DataError(f"{NAME}: cannot list {show_path(folder)} ({e.strerror})") from None
            subfolders = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    if entry.is_symlink():
                        self._check_link(entry.path, real)
                    subfolders.append(entry.path)
                elif _is_image(entry.name):
                    if entry.is_symlink():
                        if not entry.is_file():
                            raise DataError(
                                f"{NAME}: {show_path(entry.path)} is a link to nothing "
                                f"({show_path(os.readlink(entry.path))} does not exist)"
                            )
                        if not self._linked_file(entry.path, owner):
                            continue
                    elif self.linked:  # listed already through a link to it?
                        me = os.path.join(real, entry.name)
                        held = self.linked.get(me)
                        if held is not None:
                            if held[:2] != owner[:2]:
                                raise DataError(_clash((*owner[:2], entry.path), held, me))
                            continue
                    found.append(entry.path)
            stack += reversed(subfolders)
        return found

    @staticmethod
    def _check_link(link: str, inside: str) -> None:
        """Refuse a link (in real folder ``inside``) to a folder that holds it: a loop."""
        target = os.path.realpath(link)
        if inside == target or inside.startswith(target.rstrip(os.sep) + os.sep):
            raise DataError(
                f"{NAME}: {show_path(link)} is a link to {show_path(target)}, a folder it is "
                f"inside of (a loop); {LINK_RULE}"
            )

    def _linked_file(self, link: str, owner: tuple[str, str, str]) -> bool:
        """Whether the image a link to a file leads to is new: False when this class listed
        it already (or its folder, which lists it); a clash with another class or split is a
        DataError."""
        target = os.path.realpath(link)
        mine = (*owner[:2], link)
        held = self.folders.get(os.path.dirname(target))
        name = os.path.basename(target)
        if held is not None and _is_image(name):
            if held[:2] != mine[:2]:
                raise DataError(_clash(mine, held, target))
            return False
        return self._claim(self.linked, target, mine)


def _clash(owner: tuple[str, str, str], held: tuple[str, str, str], real: str) -> str:
    """The message for ``real`` reached by ``owner`` (split, class, path) and, before, by
    ``held``, of another class or split."""
    if held[0] == owner[0]:
        who, why = f"class {held[1]}", "an image belongs to one class"
    else:
        who, why = f"the {held[0]} split", "a test image must not be a training image"
    return (
        f"{NAME}: {show_path(owner[2])} leads to {show_path(real)}, which {who} reaches too "
        f"(through {show_path(held[2])}): {why}; {LINK_RULE}"
    )


#: The rule for symbolic links in a folder dataset, as error messages state it.
LINK_RULE = (
    "links are followed, each real folder and image counted once, but a link may not lead "
    "into a folder that holds it, nor to images of another class or split"
)


def stratified_holdout(
    targets: Sequence[int], fraction: float, seed: int = SPLIT_SEED
) -> np.ndarray:
    """Sorted indices of the held-out items: ``round(fraction * n)`` of each class of ``n``
    (at least 1 and at most ``n - 1``; none of a class of one), drawn with ``seed``."""
    labels = np.asarray(targets, dtype=np.int64)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = len(members)
        k = min(max(round(fraction * n), 1), n - 1)
        held.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)


@dataclass
class FolderOptions(DatasetOptions):
    """The data-config keys a folder dataset declares (see the module doc for the defaults)."""

    image_size: int | None = None  # side of the square model input (<= 64: CIFAR-style crops)
    channels: int | None = None  # 1 (greyscale) or 3 (RGB)
    val_fraction: float | None = None  # no ROOT/val: hold out this fraction of each class
    mean: list[float] | None = None  # per-channel normalisation (null: ImageNet's)
    std: list[float] | None = None

    def validate(self) -> None:
        require(
            self.image_size is None or self.image_size >= 8,
            f"data.image_size must be >= 8 or null; got {show(self.image_size)}",
        )
        require(
            self.channels in (None, 1, 3) and not isinstance(self.channels, bool),
            "data.channels must be 1 (greyscale), 3 (RGB) or null (from the images); "
            f"got {show(self.channels)}",
        )
        require(
            self.val_fraction is None or 0 < self.val_fraction < 1,
            f"data.val_fraction must be in (0, 1) or null; got {show(self.val_fraction)}",
        )
        mean, std = self.mean, self.std
        require(
            (mean is None) == (std is None),
            f"data.mean and data.std go together; got only {'mean' if std is None else 'std'}",
        )
        if mean is not None and std is not None:
            require(
                len(mean) == len(std) and len(mean) in (1, 3),
                f"data.mean and data.std need 1 or 3 values each, as many as channels; got "
                f"{show(mean)} and {show(std)}",
            )
            require(
                self.channels is None or len(mean) == self.channels,
                f"data.mean needs {self.channels} value(s) for data.channels={self.channels}; "
                f"got {show(mean)}",
            )
            require(all(x > 0 for x in std), f"data.std must be > 0; got {show(std)}")

    def channels_known(self) -> int | None:
        return len(self.mean) if self.mean is not None else self.channels


def _transforms(
    size: int, mean: Sequence[float], std: Sequence[float], train: bool, augment: bool
) -> tuple[Callable | None, T.Compose, int | None]:
    """``(prepare, transform, stored size)`` of a split: ``prepare`` (PIL -> PIL, or None) is
    applied to every decoded image, then ``transform`` (PIL -> normalised tensor). The fast
    path holds the prepared images (all ``stored size`` square; None: not one size) and
    replays ``transform`` on them."""
    mean, std = tuple(mean), tuple(std)
    if size <= SMALL_MAX:
        prepare = T.Compose([T.Resize(size), T.CenterCrop(size)])
        return prepare, cifar_transform(mean, std, train, augment, size, max(1, size // 8)), size
    if train and augment:
        return None, imagenet_transform(True, True, size, mean, std), None
    prepare = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size)])
    return prepare, T.Compose([T.ToTensor(), T.Normalize(mean, std)]), size


class ImageFolderDataset(Dataset):
    """Images read from files; items ``(image [C, S, S] float32 normalised, target int)``.

    Attributes:
        paths, targets: one entry per item.
        classes: the class names (class ``i`` is ``classes[i]``).
        mode: PIL mode every image is converted to (``L`` or ``RGB``).
        prepare, transform: see :func:`_transforms`; ``stored_size`` the side of the prepared
            images (None: not one size, so the fast path cannot hold them).
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: Sequence[int],
        classes: Sequence[str],
        mode: str,
        prepare: Callable | None,
        transform: Callable,
        stored_size: int | None,
    ) -> None:
        self.paths, self.targets = list(paths), [int(t) for t in targets]
        self.classes = tuple(classes)
        self.mode, self.prepare, self.transform = mode, prepare, transform
        self.stored_size = stored_size

    def __len__(self) -> int:
        return len(self.paths)

    def prepared(self, index: int) -> Image.Image:
        img = read_image(self.paths[index], self.mode)
        return self.prepare(img) if self.prepare is not None else img

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.prepared(index)), self.targets[index]

    def read_uint8(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """The prepared images of ``indices`` (None: all) as uint8 ``[N, S, S]`` (greyscale) or
        ``[N, S, S, 3]``, for the fast input path."""
        if self.stored_size is None:
            raise ValueError("its images are not prepared to one size (ImageNet-style training)")
        items = range(len(self)) if indices is None else indices
        shape = (self.stored_size, self.stored_size) + (() if self.mode == "L" else (3,))
        out = np.empty((len(items), *shape), dtype=np.uint8)
        for k, i in enumerate(items):
            out[k] = np.asarray(self.prepared(int(i)), dtype=np.uint8)
        return out


def _channels(paths: Sequence[str], targets: Sequence[int]) -> int:
    """1 when the first image of each of up to 16 classes is greyscale, else 3."""
    firsts: dict[int, str] = {}
    for path, t in zip(paths, targets, strict=True):
        if t not in firsts:
            firsts[t] = path
            if len(firsts) == _CHANNEL_PROBES:
                break
    for path in firsts.values():
        try:
            with Image.open(path) as img:
                if img.mode not in _GREY_MODES:
                    return 3
        except UNREADABLE as e:
            raise unreadable(path, e) from None
    return 1


def _default_size(path: str) -> int:
    try:
        with Image.open(path) as img:
            short = min(img.size)
    except UNREADABLE as e:
        raise unreadable(path, e) from None
    return 224 if short > SMALL_MAX else 32


def locate(root: str | None) -> Path:
    """The folder's ``train/``, or DataNotFoundError when it is not there."""
    if root is None:
        raise DataNotFoundError(f"{NAME}: data.root is required ({LAYOUT})")
    train_dir = Path(root).expanduser() / "train"
    if not train_dir.is_dir():
        hint = (
            "; `ckd make-folder --out DIR` writes one from Fashion-MNIST"
            if not train_dir.parent.exists()
            else ""
        )
        raise DataNotFoundError(f"{NAME}: no folder {train_dir}; expected {LAYOUT}{hint}")
    return train_dir


def configure(root: str | None, o: FolderOptions) -> DatasetSpec:
    """Read the folder ``root`` with options ``o``: its classes and split files, channels,
    image size and normalisation, as a :class:`DatasetSpec` whose ``build(root, train, augment,
    download)`` gives the train or test split (``root`` and ``download`` are ignored: the
    folder was read here).

    Raises:
        DataNotFoundError: no ``root/train`` with class folders of images, or no test split.
        ConfigError: ``val_fraction`` together with a ``root/val`` folder.
    """
    train_dir = locate(root)
    val_dir = train_dir.parent / "val"
    classes = class_folders(train_dir)
    if not classes:
        raise DataNotFoundError(f"{NAME}: {train_dir} has no class folders; expected {LAYOUT}")
    scan = FolderScan()
    paths, targets = scan.split(train_dir, classes)
    if val_dir.is_dir():
        if o.val_fraction is not None:
            raise ConfigError(
                f"data.val_fraction={o.val_fraction}: {val_dir} exists and is the test split; "
                "set data.val_fraction=null, or remove the folder to hold out a fraction of train"
            )
        test_paths, test_targets = scan.split(val_dir, classes)
    elif o.val_fraction is not None:
        held = stratified_holdout(targets, o.val_fraction)
        keep = np.setdiff1d(np.arange(len(paths)), held)
        test_paths, test_targets = [paths[i] for i in held], [targets[i] for i in held]
        paths, targets = [paths[i] for i in keep], [targets[i] for i in keep]
    else:
        raise DataNotFoundError(
            f"{NAME}: no folder {val_dir} for the test split; add one, or set "
            "data.val_fraction (e.g. 0.1) to hold out that fraction of each training class"
        )
    if not test_paths:
        raise DataNotFoundError(f"{NAME}: the test split ({val_dir}) holds no image")
    channels = o.channels or _channels(paths, targets)
    size = o.image_size or _default_size(paths[0])
    if o.mean is not None and o.std is not None:
        mean, std = tuple(o.mean), tuple(o.std)
    else:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (GREY_MEAN, GREY_STD)
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(
            f"data.mean / data.std need {channels} value(s), one per channel; got {list(mean)} "
            f"and {list(std)}"
        )
    info = DatasetInfo(NAME, len(classes), channels, size, mean, std, tuple(classes))
    mode = "L" if channels == 1 else "RGB"
    splits = {True: (paths, targets), False: (test_paths, test_targets)}

    def build(
        _root: str | None,
        train: bool,
        augment: bool = True,
        _download: bool = False,
        _verify: bool = True,  # no published checksums for a user's folder
    ) -> Dataset:
        prepare, transform, stored = _transforms(size, mean, std, train, augment)
        files, labels = splits[train]
        return ImageFolderDataset(files, labels, classes, mode, prepare, transform, stored)

    return DatasetSpec(info, build)


def _build_default(
    root: str | None, train: bool, augment: bool = True, download: bool = False, verify: bool = True
):
    """``build_dataset("folder", root, ...)``: the folder with every option at its default."""
    return configure(root, FolderOptions()).build(root, train, augment, download, verify)


DATASETS.register(NAME)(DatasetSpec(None, _build_default, configure, locate, FolderOptions))
