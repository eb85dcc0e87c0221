"""Tiny synthetic CIFAR and Fashion-MNIST folders in the real on-disk formats.

The images are class-dependent (a per-class colour / shape plus noise), so a model
can learn them; tests train on them. Nothing here needs the network.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ckd.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR100_COARSE_CLASSES
from ckd.data.fashion_mnist import split_files
from ckd.data.idx import write_idx


class _Py2StylePickler(pickle._Pickler):  # the pure-Python pickler lets us override bytes
    """Pickles ``bytes`` as Python 2 ``str`` (BINSTRING opcodes), like the real files.

    The real CIFAR pickles were written by Python 2, so their keys/names load as
    ``str`` with ``encoding="latin1"`` (torchvision) and as ``bytes`` with
    ``encoding="bytes"`` (the loader on the CIFAR web page). Python 3's own bytes
    opcodes would load as ``bytes`` either way and break torchvision.
    """

    # the pure-Python pickler's (typeshed leaves them out)
    dispatch = pickle._Pickler.dispatch.copy()
    write: Callable[[bytes], object]
    memoize: Callable[[object], None]

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes  # type: ignore[assignment]  # typeshed: Unpickler's functions


def _dump_py2(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    _Py2StylePickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels, as equal per class as possible, in random order."""
    return rng.permutation(np.arange(n) % num_classes)


def _cifar_images(
    labels: np.ndarray, colours: np.ndarray, patterns: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """uint8 ``[N, 3, 32, 32]``: class colour + class 4x4 pattern (8x upsampled) + noise."""
    base = colours[labels][:, :, None, None] + patterns[labels].repeat(8, 2).repeat(8, 3)
    noisy = base + rng.normal(0.0, 12.0, size=base.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def make_fake_cifar(
    root: str | Path,
    num_classes: int = 100,
    n_train: int = 200,
    n_test: int = 100,
    seed: int = 0,
) -> Path:
    """Write a tiny CIFAR folder under ``root`` and return ``root`` (as a Path).

    ``num_classes == 10`` writes ``root/cifar-10-batches-py`` (``data_batch_1..5``,
    ``test_batch``, ``batches.meta``); otherwise ``root/cifar-100-python``
    (``train``, ``test``, ``meta``) with fine labels in ``0..num_classes-1`` (the
    meta still names all 100 classes, as torchvision expects). Each batch is a
    Python-2-style pickled dict as in the real archives: ``b"data"`` uint8
    ``[N, 3072]`` (R, G, B planes of 32x32, row-major), ``b"labels"`` or
    ``b"fine_labels"``/``b"coarse_labels"``, ``b"filenames"``, ``b"batch_label"``,
    which :func:`ckd.data.safe_pickle.load_data_pickle` reads like the real files. Their md5s
    are not the published ones: read the folder with ``verify=False`` (``data.verify=false``).
    """
    if not 2 <= num_classes <= 100:
        raise ValueError(f"num_classes must be in 2..100; got {num_classes}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1; got {n_train}, {n_test}")
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40.0, 215.0, size=(num_classes, 3))
    patterns = rng.uniform(-40.0, 40.0, size=(num_classes, 3, 4, 4))
    names = CIFAR10_CLASSES if num_classes == 10 else CIFAR100_CLASSES

    def batch(n: int, label: str) -> dict[bytes, Any]:
        labels = _balanced_labels(n, num_classes, rng)
        data = _cifar_images(labels, colours, patterns, rng).reshape(n, 3072)
        files = [f"{names[y]}_s_{i:06d}.png".encode() for i, y in enumerate(labels)]
        out: dict[bytes, Any] = {b"batch_label": label.encode(), b"filenames": files}
        if num_classes == 10:
            out[b"labels"] = labels.tolist()
        else:
            out[b"fine_labels"] = labels.tolist()
            out[b"coarse_labels"] = (labels // 5).tolist()
        out[b"data"] = data
        return out

    root = Path(root)
    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        sizes = [len(a) for a in np.array_split(np.arange(n_train), 5)]
        for i, n in enumerate(sizes, start=1):
            _dump_py2(batch(n, f"training batch {i} of 5"), folder / f"data_batch_{i}")
        _dump_py2(batch(n_test, "testing batch 1 of 1"), folder / "test_batch")
        meta = {
            b"num_cases_per_batch": max(sizes),
            b"label_names": [c.encode() for c in CIFAR10_CLASSES],
            b"num_vis": 3072,
        }
        _dump_py2(meta, folder / "batches.meta")
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        _dump_py2(batch(n_train, "training batch 1 of 1"), folder / "train")
        _dump_py2(batch(n_test, "testing batch 1 of 1"), folder / "test")
        meta = {
            b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES],
            b"coarse_label_names": [c.encode() for c in CIFAR100_COARSE_CLASSES],
        }
        _dump_py2(meta, folder / "meta")
    return root


def _fashion_images(
    labels: np.ndarray, shapes: np.ndarray, levels: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """uint8 ``[N, 28, 28]``: a class shape (5x5 mask, 4x upsampled, centred) on 0."""
    n = len(labels)
    mask = shapes[labels].repeat(4, 1).repeat(4, 2)  # [N, 20, 20]
    fg = levels[labels][:, None, None] + rng.normal(0.0, 15.0, size=(n, 20, 20))
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    out[:, 4:24, 4:24] = np.where(mask, np.clip(np.rint(fg), 1, 255), 0)
    return out


def make_fake_fashion_mnist(
    root: str | Path, n_train: int = 600, n_test: int = 200, seed: int = 0
) -> Path:
    """Write the four gzipped IDX files of a tiny Fashion-MNIST flat into ``root``.

    Images are uint8 ``[N, 28, 28]`` with an exact 0 background and a per-class
    shape in the centre; labels uint8 ``[N]`` in ``0..9``, balanced. Returns ``root``.
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1; got {n_train}, {n_test}")
    rng = np.random.default_rng(seed)
    shapes = rng.random((10, 5, 5)) < 0.5
    shapes[:, 2, 2] = True  # never an empty shape
    levels = rng.uniform(120.0, 230.0, size=10)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for train, n in ((True, n_train), (False, n_test)):
        labels = _balanced_labels(n, 10, rng)
        images_name, labels_name = split_files(train)
        write_idx(root / f"{images_name}.gz", _fashion_images(labels, shapes, levels, rng))
        write_idx(root / f"{labels_name}.gz", labels.astype(np.uint8))
    return root


def make_fake_image_folder(
    root: str | Path,
    num_classes: int = 3,
    per_class: int = 8,
    val_per_class: int | None = 2,
    size: int | tuple[int, int] = 20,
    channels: int = 3,
    fmt: str = "png",
    seed: int = 0,
) -> Path:
    """Write a tiny ``folder`` dataset, ``root/{train,val}/class_<k>/<i>.<fmt>``, and return
    ``root``. Each class has its own colour (or grey level) plus noise, so a model can learn it;
    ``size`` is ``(width, height)`` or a square side; ``val_per_class=None`` writes no val
    folder."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    width, height = (size, size) if isinstance(size, int) else size
    levels = np.linspace(30, 225, num_classes)
    colours = rng.uniform(30.0, 225.0, size=(num_classes, 3))
    from PIL import Image

    splits = {"train": per_class} | ({"val": val_per_class} if val_per_class else {})
    for split, count in splits.items():
        for k in range(num_classes):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = levels[k] if channels == 1 else colours[k]
                shape = (height, width) if channels == 1 else (height, width, 3)
                noisy = np.clip(base + rng.normal(0.0, 20.0, size=shape), 0, 255)
                Image.fromarray(noisy.astype(np.uint8)).save(folder / f"{i}.{fmt}")
    return root
