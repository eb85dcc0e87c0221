"""Image classification: a labelled image dataset, classifier student and teacher, top-1/top-5.

The config's ``data`` names a dataset of :mod:`ckd.data` and ``student`` / ``teacher`` models
of :mod:`ckd.models` (zoo, ``tv:``, ``timm:``); the methods see a row per image
(:class:`~ckd.methods.views.ClassifierView`). ``data.loader`` picks the training input: the
dataset's transforms in DataLoader workers (``standard``) or the split held in memory and
augmented on the device (``fast``, :class:`~ckd.engine.loaders.MemoryLoader`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ckd.data import DatasetInfo, resolve_dataset, subset
from ckd.data.base import dataset_size
from ckd.data.fast import memory_data
from ckd.engine.distributed import shard
from ckd.engine.evaluate import evaluate
from ckd.engine.loaders import MemoryLoader, MicroBatch, StandardLoader, memory_batches
from ckd.engine.runtime import Runtime
from ckd.engine.task import Task, register_task
from ckd.errors import ConfigError
from ckd.tasks.classification.config import ClassificationConfig
from ckd.tasks.classification.models import build_distiller


def datasets(cfg: ClassificationConfig) -> tuple[DatasetInfo, Dataset[Any], Dataset[Any]]:
    """The dataset's facts and its training (augmented, subset) and test splits."""
    d = cfg.data
    spec = resolve_dataset(d)  # a folder dataset reads its classes, channels, size here
    assert spec.info is not None
    info = spec.info
    train = spec.build(d.root, True, d.augment, d.download, d.verify)
    test = spec.build(d.root, False, False, d.download, d.verify)
    for split, dataset, n in (("train", train, d.train_subset), ("test", test, d.test_subset)):
        if n is not None and n > dataset_size(dataset):
            raise ConfigError(
                f"data.{split}_subset={n} but the {split} split of {d.name} holds "
                f"{dataset_size(dataset)} images; give at most that, or null for all"
            )
    seed = cfg.run.seed
    return info, subset(train, d.train_subset, seed=seed), subset(test, d.test_subset, seed=seed)


@register_task("classification")
class Classification(Task):
    Config = ClassificationConfig
    score = "top1"
    fixed_shapes = True  # every batch [B, C, S, S] images and [B] labels (the last one dropped)

    cfg: ClassificationConfig

    def __init__(self, cfg: ClassificationConfig, runtime: Runtime) -> None:
        self.cfg, self.runtime = cfg, runtime
        d, rt = cfg.data, runtime
        self.info, train, test = datasets(cfg)
        accum = cfg.optim.accum_steps
        self.test: Iterable[Any]
        if d.loader == "fast":
            self.memory = memory_data(train, rt.device, d.name)
            test_memory = memory_data(test, rt.device, d.name)
            assert d.aug_seed is not None  # ClassificationConfig.resolve sets it
            self.loader = MemoryLoader(
                self.memory,
                d.batch_size,
                cfg.run.seed,
                d.aug_seed,
                rt.channels_last,
                rt.dist,
                accum,
            )
            order = shard(len(test_memory), rt.dist)
            size = d.test_batch_size
            pieces = [order[i : i + size] for i in range(0, len(order), size)]

            def test_batches() -> Iterator[MicroBatch]:
                positions = torch.arange(len(test_memory))
                yield from memory_batches(
                    test_memory, positions, iter(pieces), None, rt.channels_last
                )

            self.test = _Reiterable(test_batches)
        else:
            cuda = rt.device.type == "cuda"
            self.loader = StandardLoader(
                train,
                d.batch_size,
                d.num_workers,
                cfg.run.seed,
                self._prepare,
                rt.dist,
                accum,
                pin_memory=cuda,
            )
            share = test
            if rt.dist.distributed:
                share = Subset(test, shard(dataset_size(test), rt.dist).tolist())
            self.test = DataLoader(
                share, batch_size=d.test_batch_size, num_workers=d.num_workers, pin_memory=cuda
            )
        self.num_test = dataset_size(test)
        self.distiller = build_distiller(cfg, self.info, self.loader.num_samples)

    def _prepare(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> MicroBatch:
        images, targets, index = batch
        rt = self.runtime
        images = images.to(rt.device, non_blocking=True).contiguous(memory_format=rt.memory_format)
        return MicroBatch(images, targets.to(rt.device, non_blocking=True), index)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        dist = self.runtime.dist
        reduce = dist.all_reduce_sum if dist.distributed else None
        return evaluate(model, self.test, self.runtime.device, self.runtime.amp, reduce=reduce)

    def train_stats(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"top1": 100.0 * (logits.argmax(1) == targets).float().mean()}

    def describe(self) -> str:
        cfg, d = self.cfg, self.distiller
        extra = d.extra_parameters()
        return (
            f"student {cfg.student.name} ({sum(p.numel() for p in d.student.parameters()):,} "
            f"parameters{f', +{extra:,} in the method' if extra else ''}), {cfg.data.name} "
            f"{self.loader.num_samples} train / {self.num_test} test, input {cfg.data.loader}"
        )

    def format_metrics(self, m: dict[str, float]) -> str:
        return f"top-1 {m['top1']:.2f}  top-5 {m['top5']:.2f}"

    def model_names(self) -> tuple[str, str | None]:
        teacher = self.cfg.teacher
        return self.cfg.student.name, teacher.name if teacher is not None else None

    def checkpoint_extras(self) -> dict[str, Any]:
        """The dataset's facts (classes, channels, size, mean/std): `ckd export` rebuilds the
        student from them without the data."""
        return {"dataset": dataclasses.asdict(self.info)}


class _Reiterable:
    """An iterable that calls ``make()`` for each pass."""

    def __init__(self, make: Callable[[], Iterator[MicroBatch]]) -> None:
        self.make = make

    def __iter__(self) -> Iterator[MicroBatch]:
        return iter(self.make())
