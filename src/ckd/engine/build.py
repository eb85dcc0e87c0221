"""Turn a validated config into the objects of a run: device, data loaders, models, method.

Kept apart from the trainer so that evaluation, benchmarks and notebooks build things the same
way. Nothing here is specific to a method: a method's needs are met through the general
mechanisms the trainer offers all (sample indices in every batch, epoch and step in ``ctx``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ckd.config import Config, DataConfig, ModelConfig
from ckd.data import DatasetInfo, resolve_dataset, subset
from ckd.data.fast import FastLoader, MemoryData, draw_augmentation, memory_data
from ckd.engine.distributed import SINGLE, DistContext, MicroBatchSampler, my_pieces, shard
from ckd.errors import ConfigError
from ckd.methods import METHODS, Distiller, Setup, Shapes
from ckd.methods.base import network_shapes
from ckd.models import Renormalize, create_model, is_external, load_weights
from ckd.models.pretrained import create_pretrained


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU. An unavailable device is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device: {name!r} requested but CUDA is not available")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"run.device: {name!r} but only {torch.cuda.device_count()} CUDA device(s)"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("run.device: 'mps' requested but it is not available")
    return torch.device(name)


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``run.amp`` on ``device`` (None: full precision)."""
    if mode == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


class IndexedDataset(Dataset):
    """Yields ``(image, target, index)``: every method may use the sample index (e.g. a memory
    bank), and the trainer never needs to know which one does."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.targets = getattr(dataset, "targets", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return image, target, index


@dataclass
class DataBundle:
    info: DatasetInfo
    train: Dataset
    test: Dataset


def build_data(cfg: DataConfig, seed: int = 0) -> DataBundle:
    """Training (augmented, indexed, optionally subset) and test datasets."""
    spec = resolve_dataset(cfg)  # a folder dataset reads its classes, channels, size here
    assert spec.info is not None
    train = spec.build(cfg.root, True, cfg.augment, cfg.download)
    test = spec.build(cfg.root, False, False, cfg.download)
    info = spec.info
    train = subset(train, cfg.train_subset, seed=seed)
    test = subset(test, cfg.test_subset, seed=seed)
    return DataBundle(info, IndexedDataset(train), IndexedDataset(test))


def test_loader(
    data: DataBundle, cfg: DataConfig, device: torch.device, ctx: DistContext = SINGLE
) -> DataLoader:
    """The test split in order (this rank's contiguous share of it when distributed)."""
    test = data.test if not ctx.distributed else Subset(data.test, shard(len(data.test), ctx))
    return DataLoader(
        test,
        batch_size=cfg.test_batch_size,
        shuffle=False,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )


def train_loader(
    data: DataBundle,
    cfg: DataConfig,
    device: torch.device,
    generator: torch.Generator,
    ctx: DistContext = SINGLE,
    accum_steps: int = 1,
) -> DataLoader:
    """A loader for one epoch: shuffle order and worker seeds come from ``generator`` alone, so an
    epoch's batches are a function of the seed and the epoch (exact resume). It yields this
    rank's ``accum_steps`` micro-batches of each global batch of ``cfg.batch_size`` in turn
    (:class:`~ckd.engine.distributed.MicroBatchSampler`); one process without accumulation gets
    the global batches themselves."""
    n = len(data.train)
    sampler = MicroBatchSampler(
        n,
        cfg.batch_size,
        generator,
        drop_last=n > cfg.batch_size,  # keep BN/CKD away from a batch of one
        ctx=ctx,
        accum_steps=accum_steps,
    )
    return DataLoader(
        data.train,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        generator=generator,
    )


def fast_data(data: DataBundle, cfg: DataConfig, device: torch.device) -> FastData:
    """``data.loader=fast``: both splits held in memory as uint8 on ``device``."""
    return FastData(
        memory_data(data.train, device, cfg.name), memory_data(data.test, device, cfg.name)
    )


@dataclass
class FastData:
    train: MemoryData
    test: MemoryData


def fast_train_loader(
    train: MemoryData,
    cfg: DataConfig,
    generator: torch.Generator,
    aug_seed: int,
    epoch: int,
    channels_last: bool = False,
    ctx: DistContext = SINGLE,
    accum_steps: int = 1,
) -> FastLoader:
    """The fast path's loader for one epoch: the order from ``generator``, each sample's
    augmentation from ``(aug_seed, epoch, sample)`` (see :mod:`ckd.data.fast`)."""
    n = len(train)
    order = torch.randperm(n, generator=generator)
    aug = train.augment
    params = draw_augmentation(aug, n, aug_seed, epoch) if aug.random else None
    return FastLoader(
        train,
        cfg.batch_size,
        order,
        params,
        drop_last=n > cfg.batch_size,
        channels_last=channels_last,
        split=(functools.partial(my_pieces, ctx=ctx, accum_steps=accum_steps), accum_steps),
    )


def fast_test_loader(
    test: MemoryData, cfg: DataConfig, channels_last: bool = False, ctx: DistContext = SINGLE
) -> FastLoader:
    """The test split in order (this rank's contiguous share of it when distributed)."""
    return FastLoader(test, cfg.test_batch_size, shard(len(test), ctx), None, False, channels_last)


def build_model(model: ModelConfig, info: DatasetInfo) -> nn.Module:
    """A model for this dataset (zoo, ``tv:`` or ``timm:``); weights from ``model.checkpoint``
    when given. With ``model.input_mean`` / ``input_std`` the network is wrapped in
    :class:`~ckd.models.Renormalize` (after loading, and with the same state-dict keys), so it
    sees the dataset's images normalised its own way."""
    size = info.image_size
    if model.pretrained:  # the published weights, from the local cache; a new head if needed
        net = create_pretrained(model.name, info.num_classes, info.in_channels, size)
    else:
        net = create_model(model.name, info.num_classes, info.in_channels, size)
    if is_external(model.name) or size != 32:  # it may not run on these images: say so now
        blank = torch.zeros(2, info.in_channels, info.image_size, info.image_size)
        modes = {m: m.training for m in net.modules()}
        try:
            with torch.no_grad():
                net.eval()(blank)
        except (RuntimeError, ValueError, AssertionError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"{model.name} does not run on {info.name} images "
                f"({info.in_channels}x{info.image_size}x{info.image_size}): {reason}"
            ) from None
        finally:
            for m, mode in modes.items():
                m.training = mode
    if model.checkpoint is not None:
        try:
            load_weights(net, model.checkpoint)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"{model.checkpoint}: does not fit {model.name}: {e}") from None
    if model.input_mean is not None and model.input_std is not None:
        try:
            net = Renormalize(net, info.mean, info.std, model.input_mean, model.input_std)
        except ValueError as e:
            raise ConfigError(f"{model.name}: {e}") from None
    return net


def build_distiller(cfg: Config, info: DatasetInfo, num_train: int) -> Distiller:
    """The configured method(s) around a fresh student and the (frozen) teacher.

    Methods that read features are told the student's and teacher's feature shapes (from one
    forward pass on a blank batch) so they can size their own modules.
    """
    student = build_model(cfg.student, info)
    teacher = build_model(cfg.teacher, info) if cfg.teacher is not None else None
    parts = cfg.method.parts()
    classes = [METHODS.get(p.name) for p in parts]
    shapes: dict[str, Shapes | None] = {"student": None, "teacher": None}
    if any(c.needs_features for c in classes):
        blank = torch.zeros(2, info.in_channels, info.image_size, info.image_size)
        shapes["student"] = network_shapes(student, info.num_classes, blank)
        if teacher is not None:
            shapes["teacher"] = network_shapes(teacher, info.num_classes, blank)
        check_stage_maps(cfg, shapes)
    setup = Setup(info.num_classes, num_train, **shapes)
    methods = [cls(p.options, setup) for cls, p in zip(classes, parts, strict=True)]
    return Distiller(student, teacher, methods)


def check_stage_maps(cfg: Config, shapes: dict[str, Shapes | None]) -> None:
    """Refuse a method that reads convolutional stage maps on a network that has fewer than two
    (a vision transformer: its only ``[B, C, H, W]`` map is the patch embedding; its blocks give
    token sequences)."""
    readers = [
        p.name
        for p in cfg.method.parts()
        if METHODS.get(p.name).needs_features and not METHODS.get(p.name).embedding_only
    ]
    if not readers:
        return
    for role in ("student", "teacher"):
        found, model = shapes[role], getattr(cfg, role)
        if found is not None and model is not None and len(found.feats) < 2:
            logit = [n for n, c in METHODS.items() if not c.needs_features and c.needs_teacher]
            embed = [n for n, c in METHODS.items() if c.needs_features and c.embedding_only]
            raise ConfigError(
                f"{role} {model.name} has no convolutional stage maps (e.g. a vision "
                f"transformer: its blocks give token sequences), which method {readers[0]!r} "
                f"reads; use a logit method ({', '.join(logit)}) or one reading the embedding "
                f"({', '.join(embed)})"
            )
