"""Dataset descriptions, the dataset registry and :func:`build_dataset`.

Every dataset yields ``(image, target)`` pairs where ``image`` is a normalised
``float32`` tensor of shape ``[C, 32, 32]`` and ``target`` an ``int`` class index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import Dataset

from ckd.registry import Registry


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for.

    The message is one line: the path(s) looked at and the layout expected there.
    """

    def __str__(self) -> str:  # FileNotFoundError would prefix "[Errno ...]" for 2 args
        return str(self.args[0]) if self.args else ""


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


Builder = Callable[[str | None, bool, bool, bool, bool], Dataset]


@dataclass(frozen=True)
class DatasetSpec:
    """What :data:`DATASETS` holds per name: the dataset's info and its builder.

    ``build(root, train, augment, download, verify)`` returns the dataset.
    """

    info: DatasetInfo
    build: Builder


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def dataset_names() -> list[str]:
    """The registered dataset names, sorted."""
    return DATASETS.names()


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; unknown names raise ``UnknownNameError``."""
    return DATASETS.get(name).info


def build_dataset(
    name: str,
    root: str | None,
    train: bool,
    augment: bool = True,
    download: bool = False,
    verify: bool = True,
) -> Dataset:
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
