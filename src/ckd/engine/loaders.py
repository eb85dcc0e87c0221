"""Training input: one protocol, two loaders, for every task.

A :class:`TrainLoader` gives, for an epoch, its optimisation steps in order, each a list of this
process's ``optim.accum_steps`` :class:`MicroBatch` es on the run's device. Each epoch's sample
order is drawn from ``(seed, epoch)`` alone, each sample's augmentation from
``(seed, epoch, sample)`` alone (whichever process loads it), every global batch of
``data.batch_size`` is cut into ``processes x accum_steps`` equal micro-batches
(:func:`~ckd.engine.distributed.my_pieces`), and ``epoch(e, start)`` can begin at any step, so a
run resumed anywhere sees what an uninterrupted one would.

- :class:`StandardLoader`: a dataset's own transforms in DataLoader workers (any task); the
  torch and Python ``random`` draws of sample ``i``'s transforms in epoch ``e`` come from a
  generator seeded with :func:`sample_seed` ``(seed, e, i)``, so ``data.num_workers`` (0, 2 or
  16) changes the speed, never the numbers, and a run resumed mid-epoch with workers sees what
  an uninterrupted one would.
- :class:`MemoryLoader`: an in-memory split (:class:`~ckd.data.fast.MemoryData`, uint8 on the
  device) augmented a batch at a time there; each sample's view is drawn from
  ``(aug_seed, epoch, sample)`` alone, so a teacher cache can replay it.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ckd.data.base import dataset_size
from ckd.data.fast import AugParams, MemoryData, augment_batch, draw_augmentation
from ckd.engine.distributed import SINGLE, DistContext, MicroBatchSampler, my_pieces


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of every random draw of one epoch."""
    return (seed * 1_000_003 + epoch) % 2**63


_MASK64 = 2**64 - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s random draws (its augmentation) in ``epoch`` of a run
    seeded ``seed``: splitmix64's finaliser of the three, so neighbouring samples and epochs
    get unrelated seeds. In ``[0, 2**63)``."""
    x = (epoch_seed(seed, epoch) * 0x9E3779B97F4A7C15 + index + 1) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) >> 1


@contextlib.contextmanager
def seeded_draws(seed: int) -> Iterator[None]:
    """torch's CPU generator and Python's ``random`` seeded with ``seed`` while the block runs.
    In the main process (no DataLoader worker) their states are put back afterwards, so the
    training step's own draws (dropout, ...) do not depend on how many samples were loaded
    there; a worker's draws serve only its samples."""
    generator = torch.default_generator
    saved = (generator.get_state(), random.getstate()) if get_worker_info() is None else None
    generator.manual_seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            generator.set_state(saved[0])
            random.setstate(saved[1])


class MicroBatch(NamedTuple):
    """One micro-batch: the inputs and targets (on the device, as the task's view reads them)
    and the samples' positions in the training set (CPU int64 ``[B]``)."""

    inputs: Any
    targets: Any
    index: torch.Tensor  # type: ignore[assignment]  # the field shadows tuple.index, as meant


class TrainLoader(Protocol):
    steps_per_epoch: int  # optimisation steps (global batches) per epoch
    num_samples: int  # training samples
    resumes_anywhere: bool  # a checkpoint mid-epoch resumes exactly (else: epoch ends only)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[list[MicroBatch]]:
        """The steps of ``epoch`` from step ``start`` on, each this process's micro-batches."""
        ...


class IndexedDataset(Dataset[tuple[Any, ...]]):
    """Yields ``(*item, index)``: every method may use the sample index (e.g. a memory bank),
    and the trainer never needs to know which one does. With a ``seed``, the item of sample
    ``index`` is drawn under :func:`seeded_draws` ``(sample_seed(seed, epoch, index))``
    (``epoch``: set by the loader before each epoch)."""

    def __init__(self, dataset: Dataset[Any], seed: int | None = None) -> None:
        self.dataset = dataset
        self.targets = getattr(dataset, "targets", None)
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return dataset_size(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        if self.seed is None:
            return (*self.dataset[index], index)
        with seeded_draws(sample_seed(self.seed, self.epoch, index)):
            item = self.dataset[index]
        return (*item, index)


def _steps(n: int, batch_size: int) -> tuple[int, bool]:
    """Steps per epoch and whether a last incomplete batch is dropped (it is, unless the set
    holds a single batch: BN and CKD need more than one sample)."""
    drop_last = n > batch_size
    return (n // batch_size if drop_last else -(-n // batch_size)), drop_last


def _grouped(items: Iterator[MicroBatch], size: int) -> Iterator[list[MicroBatch]]:
    group: list[MicroBatch] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []


class StandardLoader:
    """Batches of an indexed dataset through a DataLoader: ``prepare`` turns each collated
    ``(inputs, targets, index)`` into a :class:`MicroBatch` on the device. Each sample's random
    draws come from ``(seed, epoch, index)`` (:class:`IndexedDataset`), so the number of
    workers changes nothing but the speed. A dataset with a ``set_epoch`` method is told the
    epoch first (e.g. for flips drawn per epoch)."""

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        num_workers: int,
        seed: int,
        prepare: Callable[[tuple[Any, Any, torch.Tensor]], MicroBatch],
        ctx: DistContext = SINGLE,
        accum_steps: int = 1,
        collate: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool = False,
    ) -> None:
        self.dataset = IndexedDataset(dataset, seed)
        self.num_samples = len(self.dataset)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.prepare, self.ctx, self.accum_steps = prepare, ctx, accum_steps
        self.collate, self.pin_memory = collate, pin_memory
        self.steps_per_epoch, self.drop_last = _steps(self.num_samples, batch_size)
        # a run resumed mid-epoch sees exactly what an uninterrupted one would: the order is
        # drawn from (seed, epoch), each sample's augmentation from (seed, epoch, index)
        self.resumes_anywhere = True

    def epoch(self, epoch: int, start: int = 0) -> Iterator[list[MicroBatch]]:
        self.dataset.epoch = epoch  # read by the workers this epoch forks
        set_epoch = getattr(self.dataset.dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        sampler = MicroBatchSampler(
            self.num_samples,
            self.batch_size,
            generator,
            self.drop_last,
            self.ctx,
            self.accum_steps,
            start=start,
        )
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=generator,
            collate_fn=self.collate,
        )
        return _grouped((self.prepare(b) for b in loader), self.accum_steps)


class MemoryLoader:
    """The training split held in memory, augmented on the device: the order from
    ``(seed, epoch)``, each sample's augmentation from ``(aug_seed, epoch, sample)``."""

    resumes_anywhere = True  # nothing random lives outside the checkpoint

    def __init__(
        self,
        data: MemoryData,
        batch_size: int,
        seed: int,
        aug_seed: int,
        channels_last: bool = False,
        ctx: DistContext = SINGLE,
        accum_steps: int = 1,
    ) -> None:
        self.data, self.batch_size, self.seed, self.aug_seed = data, batch_size, seed, aug_seed
        self.channels_last, self.ctx, self.accum_steps = channels_last, ctx, accum_steps
        self.num_samples = len(data)
        self.steps_per_epoch, self.drop_last = _steps(self.num_samples, batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[list[MicroBatch]]:
        n, aug = self.num_samples, self.data.augment
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=generator)
        params = draw_augmentation(aug, n, self.aug_seed, epoch) if aug.random else None
        positions = torch.arange(n)
        batches = (
            positions[i * self.batch_size : (i + 1) * self.batch_size]
            for i in range(start, self.steps_per_epoch)
        )
        pieces = (p for b in batches for p in my_pieces(b, self.ctx, self.accum_steps))
        micro = memory_batches(self.data, order, pieces, params, self.channels_last)
        return _grouped(micro, self.accum_steps)


def memory_batches(
    data: MemoryData,
    order: torch.Tensor,
    pieces: Iterator[torch.Tensor],
    params: AugParams | None = None,
    channels_last: bool = False,
) -> Iterator[MicroBatch]:
    """:class:`MicroBatch` es of ``data``'s samples ``order[piece]`` for each of ``pieces``
    (contiguous ranges of positions, CPU), augmented with ``params`` (the epoch's
    :class:`~ckd.data.fast.AugParams`; None: as stored). The order goes to the device once
    (pinned first on CUDA), so no step waits on a host-to-device copy."""
    device = data.device
    order = order.to(torch.int64)
    if device.type == "cuda":
        order = order.pin_memory()
    order_dev = order.to(device, non_blocking=True)
    params = params.to(device) if params is not None else None
    for piece in pieces:
        sl = slice(int(piece[0]), int(piece[-1]) + 1) if len(piece) else slice(0, 0)
        index = order_dev[sl]
        images = augment_batch(data, index, params, channels_last)
        yield MicroBatch(images, data.targets.index_select(0, index), order[sl])
