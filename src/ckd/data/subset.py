"""Deterministic class-balanced subsets that keep ``.targets``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from ckd.data.base import dataset_size


class TargetSubset(Subset):
    """``torch.utils.data.Subset`` with the subset's ``.targets`` (a list of ints)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], targets: Sequence[int]):
        super().__init__(dataset, list(indices))
        self.targets: list[int] = [int(targets[i]) for i in self.indices]
        classes = getattr(dataset, "classes", None)
        if classes is not None:
            self.classes = classes


def _allocate(counts: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``n`` over classes as evenly as their sizes ``counts`` allow."""
    alloc = np.zeros_like(counts)
    remaining = n
    while remaining > 0:
        active = np.flatnonzero(alloc < counts)
        share = remaining // len(active)
        if share == 0:  # fewer left than classes: one more each for some, drawn by seed
            alloc[rng.permutation(active)[:remaining]] += 1
            break
        add = np.minimum(share, counts[active] - alloc[active])
        alloc[active] += add
        remaining -= int(add.sum())
    return alloc


def subset(
    dataset: Dataset[Any],
    n: int | None,
    seed: int = 0,
    targets: Sequence[int] | None = None,
) -> Dataset[Any]:
    """A class-balanced subset of ``n`` samples, the same for the same ``seed``.

    Each class gets ``n // C`` samples (the remainder goes one each to classes drawn
    with ``seed``; a class with too few samples gives its share to the others).
    ``targets`` defaults to ``dataset.targets``. ``n`` None or ``>= len(dataset)``
    returns ``dataset`` itself. The result keeps ``.targets`` (and ``.classes``) and
    its indices are in the original order.
    """
    size = dataset_size(dataset)
    if n is None or n >= size:
        return dataset
    if n < 1:
        raise ValueError(f"subset size must be >= 1 or None; got {n}")
    if targets is None:
        targets = getattr(dataset, "targets", None)
        if targets is None:
            raise ValueError(
                f"subset needs the targets of a {type(dataset).__name__}: "
                "give targets= or a dataset with .targets"
            )
    labels = np.asarray([int(t) for t in targets])
    if len(labels) != size:
        raise ValueError(f"{len(labels)} targets for a dataset of {size} items")
    rng = np.random.default_rng(seed)
    classes, inverse = np.unique(labels, return_inverse=True)
    per_class = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    alloc = _allocate(np.array([len(p) for p in per_class]), n, rng)
    chosen = np.sort(np.concatenate([p[:k] for p, k in zip(per_class, alloc, strict=True)]))
    return TargetSubset(dataset, chosen.tolist(), labels.tolist())
