"""An image folder made from Fashion-MNIST, for the ``folder`` dataset's example and tests.

:func:`make_fashion_mnist_folder` (``ckd make-folder``) writes the images of a class-balanced
sample of the real Fashion-MNIST as 28x28 greyscale PNGs in the layout of
:mod:`ckd.data.folder`::

    out/train/<class>/<index>.png     (from the 60,000 training images)
    out/val/<class>/<index>.png       (from the 10,000 test images)

Class folders are the class names with ``/`` and spaces made ``_`` (``T-shirt_top``,
``Ankle_boot``, ...); ``<index>`` is the image's position in its IDX file. The sample is drawn
with ``seed``. The folder is written beside ``out`` and renamed into place at the end, so an
interrupted run leaves no half-written ``out``. It holds a marker file (:data:`MARKER`):
``--force`` replaces only a folder that has it (one this command wrote), never another.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ckd.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from ckd.errors import ConfigError

#: The file that says a folder was written by ``ckd make-folder`` (what ``--force`` may replace).
MARKER = ".ckd-make-folder"


def _made_here(path: Path) -> bool:
    """Whether ``path`` is a folder this command wrote: its marker, and nothing but ``train/``
    and ``val/`` beside it."""
    if not path.is_dir() or path.is_symlink() or not (path / MARKER).is_file():
        return False
    return {p.name for p in path.iterdir()} <= {MARKER, "train", "val"}


def class_folder_name(name: str) -> str:
    """A class name as a folder name: ``T-shirt/top`` -> ``T-shirt_top``."""
    return name.replace("/", "_").replace(" ", "_")


def make_fashion_mnist_folder(
    out: str | Path,
    train_per_class: int = 600,
    val_per_class: int = 100,
    seed: int = 0,
    source: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Write ``out/{train,val}/<class>/*.png`` from Fashion-MNIST (found in ``source``, then
    where :mod:`ckd.data.fashion_mnist` looks); returns ``out``.

    Raises:
        ConfigError: a count below 1, or ``out`` exists and is not empty (without ``force``).
        DataNotFoundError: the Fashion-MNIST files are not found.
    """
    for key, value in (("train-per-class", train_per_class), ("val-per-class", val_per_class)):
        if value < 1:
            raise ConfigError(f"--{key} must be >= 1; got {value}")
    out = Path(out)
    empty = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
    if os.path.lexists(out) and not empty:
        if not force:
            raise ConfigError(f"{out} already exists; give another --out, or --force to replace it")
        if not _made_here(out):
            raise ConfigError(
                f"{out} was not written by ckd make-folder (no {MARKER} in it): --force replaces "
                "only such a folder; give another --out"
            )
    tmp = out.with_name(f".{out.name}.partial")
    if os.path.lexists(tmp) and not _made_here(tmp):
        raise ConfigError(f"{tmp} is in the way and was not written by ckd make-folder; move it")
    rng = np.random.default_rng(seed)
    splits = {}
    for split, train, per_class in (
        ("train", True, train_per_class),
        ("val", False, val_per_class),
    ):
        images, targets, _ = load_fashion_mnist(source, train)
        labels = np.asarray(targets)
        chosen = []
        for c in range(len(FASHION_MNIST_CLASSES)):
            members = np.flatnonzero(labels == c)
            chosen.append(np.sort(rng.permutation(members)[:per_class]))
        splits[split] = (images.numpy(), labels, chosen)
    shutil.rmtree(tmp, ignore_errors=True)  # an interrupted earlier run's (checked above)
    try:
        tmp.mkdir(parents=True)
        (tmp / MARKER).write_text("written by ckd make-folder; --force may replace this folder\n")
        for split, (pixels, _, chosen) in splits.items():
            for c, indices in enumerate(chosen):
                folder = tmp / split / class_folder_name(FASHION_MNIST_CLASSES[c])
                folder.mkdir(parents=True)
                for i in indices:
                    Image.fromarray(pixels[i]).save(folder / f"{i:05d}.png")
        if out.exists():
            if empty:
                out.rmdir()
            else:
                shutil.rmtree(out)  # ckd make-folder's own (checked above)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
