"""Dataset descriptions, the dataset registry and :func:`build_dataset`.

Every dataset yields ``(image, target)`` pairs where ``image`` is a normalised
``float32`` tensor of shape ``[C, S, S]`` (``S = DatasetInfo.image_size``) and ``target`` an
``int`` class index.

Most datasets are fixed (CIFAR, Fashion-MNIST, ImageNet: their :class:`DatasetInfo` is known in
advance). A *configurable* one (``folder``: the user's own images) learns its classes, channels
and image size from the data config and the files: its spec has a ``configure`` function and
:func:`resolve_dataset` turns a data config into the concrete spec.

A dataset declares the options of its own (beside the data keys every dataset has) as a
:class:`DatasetOptions` dataclass, as a method declares its options: the config reads them from
the ``data`` section, each checked by the options' :meth:`~DatasetOptions.validate`.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torch.utils.data import Dataset

from ckd.errors import cut
from ckd.registry import Registry


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for.

    The message is one line: the path(s) looked at and the layout expected there.
    """

    def __str__(self) -> str:  # FileNotFoundError would prefix "[Errno ...]" for 2 args
        return str(self.args[0]) if self.args else ""


@contextlib.contextmanager
def download_into(name: str, folder: str | Path, offline: str) -> Iterator[Path]:
    """Around a torchvision download into ``folder``: a failure (offline, a server error, a bad
    archive) becomes one :class:`DataNotFoundError` line (``offline``: what to do without a
    network), and what the download made is removed: the folders it created (``folder`` and
    any missing parents) or, in a folder that was there, the entries it added."""
    target = Path(folder).expanduser()
    created = next((p for p in reversed([target, *target.parents]) if not p.exists()), None)
    before = set(target.iterdir()) if target.is_dir() else set()
    try:
        yield target
    except Exception as e:  # noqa: BLE001 - whatever failed, the download did not happen
        reason = " ".join(str(e).split()) or type(e).__name__
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        elif target.is_dir():
            for entry in set(target.iterdir()) - before:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise DataNotFoundError(
            f"{name}: the download into {target} failed ({cut(reason, 300)}); {offline}"
        ) from None


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, as the models and the engine need them.

    ``mean``/``std`` have one entry per input channel and are the values the
    ``Normalize`` step of :func:`build_dataset` uses.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None = None


class Builder(Protocol):
    """``build(root, train, augment=True, download=False, verify=True)``: a split of a
    dataset (see :func:`build_dataset`)."""

    def __call__(
        self,
        root: str | None,
        train: bool,
        augment: bool = True,
        download: bool = False,
        verify: bool = True,
        /,
    ) -> Dataset[Any]: ...


def dataset_size(dataset: Dataset[Any]) -> int:
    """The number of items of ``dataset``: every dataset here has a length, which torch's
    ``Dataset`` type leaves out."""
    return len(dataset)  # type: ignore[arg-type]  # Dataset declares no __len__


@dataclass
class DatasetOptions:
    """The options a dataset declares beside the common data keys (``name``, ``root``, batch
    sizes, ...): none for a fixed dataset. A configurable one subclasses this with its fields
    (their defaults documented there), which the ``data`` section of a config takes."""

    def validate(self) -> None:
        """Raise ConfigError naming a bad value (``data.<key> must be ...; got ...``)."""

    def channels_known(self) -> int | None:
        """The number of input channels, when these options fix it without reading the data."""
        return None


class DataSource(Protocol):
    """What :func:`resolve_dataset` reads of a data config."""

    name: str
    root: str | None
    options: DatasetOptions


@dataclass(frozen=True)
class DatasetSpec:
    """What :data:`DATASETS` holds per name: the dataset's info and its builder.

    ``build(root, train, augment, download, verify)`` returns the dataset, ``locate(root)``
    says early when its files are missing. A configurable dataset registers ``info=None``,
    its ``Options`` and ``configure(root, options) -> DatasetSpec``, which reads the files
    and returns the concrete spec.
    """

    info: DatasetInfo | None
    build: Builder
    configure: Callable[[str | None, Any], DatasetSpec] | None = None
    #: ``locate(root)``: a quick look (no reading) whether the files are there, raising
    #: :class:`DataNotFoundError` as ``build`` would; None: no such look.
    locate: Callable[[str | None], object] | None = None
    #: The dataset's own options (the data-config keys it reads beyond the common ones).
    Options: type[DatasetOptions] = DatasetOptions


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def dataset_names() -> list[str]:
    """The registered dataset names, sorted."""
    return DATASETS.names()


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of the fixed dataset ``name``; unknown names raise
    ``UnknownNameError``, a configurable one (``folder``) ``ValueError`` (use
    :func:`resolve_dataset` with its data config)."""
    info = DATASETS.get(name).info
    if info is None:
        raise ValueError(f"dataset {name!r} is read from its data config: use resolve_dataset")
    return info


def resolve_dataset(cfg: DataSource) -> DatasetSpec:
    """The concrete :class:`DatasetSpec` of a data config (``cfg.name`` and, for a configurable
    dataset, ``cfg.root`` and ``cfg.options``). A fixed dataset's spec is returned as it is.

    Raises:
        UnknownNameError: ``cfg.name`` is not registered.
        DataNotFoundError: a configurable dataset's files are not there.
    """
    spec = DATASETS.get(cfg.name)
    return spec.configure(cfg.root, cfg.options) if spec.configure is not None else spec


def build_dataset(
    name: str,
    root: str | None,
    train: bool,
    augment: bool = True,
    download: bool = False,
    verify: bool = True,
) -> Dataset[Any]:
    """Build the train or test split of dataset ``name``.

    Items are ``(image [C, 32, 32] float32 normalised, target int)``. The training
    split with ``augment=True`` gets the dataset's standard augmentation; the test
    split, or ``augment=False``, only converts and normalises (deterministic).
    The result has a ``.targets`` sequence (one ``int`` per item), which
    :func:`ckd.data.subset` uses. ``verify`` checks the files against their published
    checksums where the dataset has them (CIFAR's md5s); only generated stand-in data turns
    it off.

    Raises:
        UnknownNameError: ``name`` is not registered.
        DataNotFoundError: the files are missing (and ``download`` is False).
        DataError: a file is corrupt, truncated or fails its checksum.
    """
    return DATASETS.get(name).build(root, train, augment, download, verify)
