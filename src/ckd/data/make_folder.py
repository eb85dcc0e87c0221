"""An image folder made from Fashion-MNIST, for the ``folder`` dataset's example and tests.

:func:`make_fashion_mnist_folder` (``ckd make-folder``) writes the images of a class-balanced
sample of the real Fashion-MNIST as 28x28 greyscale PNGs in the layout of
:mod:`ckd.data.folder`::

    out/train/<class>/<index>.png     (from the 60,000 training images)
    out/val/<class>/<index>.png       (from the 10,000 test images)

Class folders are the class names with ``/`` and spaces made ``_`` (``T-shirt_top``,
``Ankle_boot``, ...); ``<index>`` is the image's position in its IDX file. The sample is drawn
with ``seed``. The folder is written beside ``out`` and renamed into place at the end, so an
interrupted run leaves no half-written ``out``.

Its marker file (:data:`MARKER`, written first) lists every file the command wrote with the
sha256 of its bytes. ``--force`` replaces a folder only when its marker is there and it holds
exactly those files, unchanged (and their folders): a file added under ``train/`` or ``val/``,
an image edited, a link, or a folder without the marker (or with one of an earlier release,
which listed nothing) is refused, and nothing is deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ckd.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from ckd.errors import ConfigError, show_path
from ckd.paths import output_path

#: The file that says a folder was written by ``ckd make-folder`` and lists what it wrote.
MARKER = ".ckd-make-folder"
#: What the marker says of itself.
WRITER = "ckd make-folder"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(path: Path) -> dict[str, str] | None:
    """The files (relative path -> sha256) the marker of folder ``path`` lists, or None when
    there is no marker of this command (absent, a link, unreadable, an earlier release's)."""
    marker = path / MARKER
    if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > 64 << 20:
        return None
    try:
        data = json.loads(marker.read_bytes())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) and data.get("by") == WRITER else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return None
    return files


def replace_problem(path: Path) -> str | None:
    """None when ``--force`` may replace folder ``path``: it holds this command's marker and
    exactly the files the marker lists, with the bytes it wrote, and their folders. Else why
    not, for a one-line refusal (the first foreign or changed entry named)."""
    if path.is_symlink() or not path.is_dir():
        return "is not a folder"
    files = _manifest(path)
    if files is None:
        if not (path / MARKER).exists():
            return f"has no {MARKER} (the list of files ckd make-folder writes)"
        return f"has a {MARKER} that lists no files (an earlier release's, or damaged)"
    folders = {str(Path(f).parent) for f in files}
    folders |= {str(p) for f in folders for p in Path(f).parents}
    for folder, dirs, names in os.walk(path):  # links are not followed
        here = Path(folder).relative_to(path)
        for name in sorted(dirs + names):
            entry = Path(folder) / name
            rel = str(here / name)
            if rel == MARKER:
                continue
            if entry.is_symlink():
                return f"holds {show_path(entry)}, a link ckd make-folder did not make"
            if entry.is_dir():
                if rel not in folders:
                    return f"holds {show_path(entry)}, a folder ckd make-folder did not write"
            elif rel not in files:
                return f"holds {show_path(entry)}, which ckd make-folder did not write"
            elif _sha256(entry) != files[rel]:
                return f"holds {show_path(entry)}, changed since ckd make-folder wrote it"
    return None


def _remove(path: Path, files: dict[str, Any]) -> None:
    """Delete a folder :func:`replace_problem` accepted: the listed files, then the folders,
    deepest first, then the marker and ``path`` (a folder that is not empty by then stops it,
    deleting nothing more)."""
    for rel in files:
        (path / rel).unlink(missing_ok=True)
    folders = {p for rel in files for p in Path(rel).parents if str(p) != "."}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if (path / folder).is_dir():
            (path / folder).rmdir()
    (path / MARKER).unlink()
    path.rmdir()


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
        ConfigError: a count below 1; ``out`` exists and is not empty (without ``force``), or
            holds anything this command did not write (with it); ``out`` is the current folder
            or above it.
        DataNotFoundError: the Fashion-MNIST files are not found.
    """
    for key, value in (("train-per-class", train_per_class), ("val-per-class", val_per_class)):
        if value < 1:
            raise ConfigError(f"--{key} must be >= 1; got {value}")
    shown = out
    out = output_path(out, "--out")
    empty = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
    if os.path.lexists(out) and not empty:
        if not force:
            raise ConfigError(
                f"{show_path(shown)} already exists; give another --out, or --force to replace it"
            )
        problem = replace_problem(out)
        if problem:
            raise ConfigError(
                f"--force: {show_path(shown)} {problem}; --force replaces only a folder "
                "ckd make-folder wrote, as it wrote it, so nothing was deleted"
            )
    tmp = out.with_name(f".{out.name}.partial")
    if os.path.lexists(tmp) and not (
        tmp.is_dir() and not tmp.is_symlink() and (tmp / MARKER).is_file()
    ):
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
    shutil.rmtree(tmp, ignore_errors=True)  # an interrupted earlier run's (its marker, above)
    try:
        tmp.mkdir(parents=True)
        marker: dict[str, Any] = {
            "by": WRITER,
            "files": None,
            "note": "--force may replace this folder",
        }
        (tmp / MARKER).write_text(json.dumps(marker) + "\n")  # first: the folder is ours
        written: dict[str, str] = {}
        for split, (pixels, _, chosen) in splits.items():
            for c, indices in enumerate(chosen):
                name = class_folder_name(FASHION_MNIST_CLASSES[c])
                (tmp / split / name).mkdir(parents=True)
                for i in indices:
                    rel = f"{split}/{name}/{i:05d}.png"
                    Image.fromarray(pixels[i]).save(tmp / rel)
                    written[rel] = _sha256(tmp / rel)
        marker["files"] = written
        (tmp / MARKER).write_text(json.dumps(marker, indent=0) + "\n")
        if out.exists():
            if empty:
                out.rmdir()
            else:  # make-folder's own, as checked above; checked again, something may be new
                problem = replace_problem(out)
                if problem:
                    raise ConfigError(f"--force: {show_path(shown)} {problem}; nothing deleted")
                try:
                    _remove(out, _manifest(out) or {})
                except OSError as e:
                    raise ConfigError(
                        f"--force: {show_path(shown)} changed while it was replaced "
                        f"({e.strerror}: {show_path(e.filename)}); what is left was not "
                        "written by ckd make-folder and was kept"
                    ) from None
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
