"""ImageNet-1K and Places365 from their standard folder layouts, with the standard augmentation.

ImageNet-1K (ILSVRC2012), the usual ``ImageFolder`` layout (validation images sorted into their
class folders, as torchvision's ``ImageNet`` and the timm/DeiT scripts expect)::

    root/train/n01440764/*.JPEG ... (1000 class folders)
    root/val/n01440764/*.JPEG ...

Places365-Standard, either the "easy format" archive (``places365standard_easyformat.tar``)::

    root/train/<category>/*.jpg ... (365 category folders, e.g. ``airfield``)
    root/val/<category>/*.jpg ...

or torchvision's ``Places365`` layout (``categories_places365.txt``,
``places365_train_standard.txt``, ``places365_val.txt`` and the ``data_256``/``val_256`` (small)
or ``data_large_standard``/``val_large`` folders).

Training: ``RandomResizedCrop(224)`` + horizontal flip; test: resize 256, centre crop 224; both
normalised with the ImageNet mean/std. Items are ``(image [3, 224, 224] float32, target int)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision import transforms as T

from ckd.data.base import (
    DATASETS,
    Builder,
    DataNotFoundError,
    DatasetInfo,
    DatasetSpec,
    download_into,
)
from ckd.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGENET_INFO = DatasetInfo("imagenet", 1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD)
PLACES365_INFO = DatasetInfo("places365", 365, 3, 224, IMAGENET_MEAN, IMAGENET_STD)


def imagenet_transform(
    train: bool,
    augment: bool = True,
    size: int = 224,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> T.Compose:
    """``RandomResizedCrop(size)`` + flip for training; resize ``size * 8/7`` (256 for 224) and
    centre crop ``size`` otherwise; then ``ToTensor`` and ``Normalize(mean, std)`` (ImageNet's by
    default)."""
    if train and augment:
        steps = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(round(size * 256 / 224)), T.CenterCrop(size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def load_image(path: str) -> Image.Image:
    """An image file as RGB (what ``ImageFolder`` reads); a file PIL cannot decode (corrupt,
    truncated, not an image, a decompression bomb) is a one-line DataError naming it, also
    when a DataLoader worker meets it."""
    try:
        with open(path, "rb") as f, Image.open(f) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{path}: cannot read the image ({reason[:200]})") from None


def _split_folder(info: DatasetInfo, root: str | None, train: bool) -> Path:
    split = "train" if train else "val"
    layout = f"ROOT/train/<class>/* and ROOT/val/<class>/* ({info.num_classes} class folders)"
    if root is None:
        raise DataNotFoundError(f"{info.name}: a data root is required ({layout})")
    folder = Path(root).expanduser() / split
    if not folder.is_dir():
        raise DataNotFoundError(f"{info.name}: no folder {folder}; expected {layout}")
    return folder


def _image_folder(info: DatasetInfo, folder: Path, train: bool, augment: bool) -> Dataset:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if len(classes) != info.num_classes:
        raise DataNotFoundError(
            f"{info.name}: {folder} holds {len(classes)} class folders; expected "
            f"{info.num_classes} (the class index is the position of the folder name in sorted "
            "order, so every class must be there)"
        )
    return datasets.ImageFolder(
        str(folder), transform=imagenet_transform(train, augment), loader=load_image
    )


def _build_imagenet(
    root: str | None,
    train: bool,
    augment: bool = True,
    download: bool = False,
    verify: bool = True,
) -> Dataset:
    """Build imagenet: items (image [3, 224, 224] float, target int). Never downloads: the
    archives need an account with image-net.org."""
    folder = _split_folder(IMAGENET_INFO, root, train)
    return _image_folder(IMAGENET_INFO, folder, train, augment)


def _build_places365(
    root: str | None,
    train: bool,
    augment: bool = True,
    download: bool = False,
    verify: bool = True,
) -> Dataset:
    """Build places365 (the easy-format folders, else torchvision's layout; ``download`` only
    with the latter)."""
    info = PLACES365_INFO
    base = Path(root).expanduser() if root is not None else None
    if base is not None and (download or _torchvision_places(base)):
        small = (base / "data_256").is_dir() or (base / "val_256").is_dir() or download
        offline = "offline, put the easy-format folders there and set data.download=false"
        with download_into(info.name, base, offline) if download else contextlib.nullcontext():
            return datasets.Places365(
                str(base),
                split="train-standard" if train else "val",
                small=small,
                download=download,
                transform=imagenet_transform(train, augment),
                loader=load_image,
            )
    return _image_folder(info, _split_folder(info, root, train), train, augment)


def _torchvision_places(base: Path) -> bool:
    return (base / "categories_places365.txt").is_file()


def _locate(info: DatasetInfo) -> Callable[[str | None], None]:
    """The quick look whether the train and val folders are there."""

    def locate(root: str | None) -> None:
        if info is PLACES365_INFO and root is not None and _torchvision_places(Path(root)):
            return
        for train in (True, False):
            _split_folder(info, root, train)

    return locate


_BUILDERS: dict[str, tuple[DatasetInfo, Builder]] = {
    "imagenet": (IMAGENET_INFO, _build_imagenet),
    "places365": (PLACES365_INFO, _build_places365),
}
for _name, (_info, _build) in _BUILDERS.items():
    DATASETS.register(_name)(DatasetSpec(_info, _build, locate=_locate(_info)))
