"""Turn a validated config into the objects of a run: device, data loaders, models, method.

Kept apart from the trainer so that evaluation, benchmarks and notebooks build things the same
way. Nothing here is specific to a method: a method's needs are met through the general
mechanisms the trainer offers all (sample indices in every batch, epoch and step in ``ctx``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ckd.config import Config, DataConfig, ModelConfig
from ckd.data import DatasetInfo, build_dataset, dataset_info, subset
from ckd.errors import ConfigError
from ckd.methods import METHODS, Distiller, Setup, Shapes
from ckd.methods.base import network_shapes
from ckd.models import create_model, load_weights


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
    info = dataset_info(cfg.name)
    train = build_dataset(
        cfg.name, cfg.root, train=True, augment=cfg.augment, download=cfg.download
    )
    test = build_dataset(cfg.name, cfg.root, train=False, augment=False, download=cfg.download)
    train = subset(train, cfg.train_subset, seed=seed)
    test = subset(test, cfg.test_subset, seed=seed)
    return DataBundle(info, IndexedDataset(train), IndexedDataset(test))


def test_loader(data: DataBundle, cfg: DataConfig, device: torch.device) -> DataLoader:
    return DataLoader(
        data.test,
        batch_size=cfg.test_batch_size,
        shuffle=False,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )


def train_loader(
    data: DataBundle, cfg: DataConfig, device: torch.device, generator: torch.Generator
) -> DataLoader:
    """A loader for one epoch: shuffle order and worker seeds come from ``generator`` alone, so an
    epoch's batches are a function of the seed and the epoch (exact resume)."""
    return DataLoader(
        data.train,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(data.train) > cfg.batch_size,  # keep BN/CKD away from a batch of one
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        generator=generator,
    )


def build_model(model: ModelConfig, info: DatasetInfo) -> nn.Module:
    """A zoo model for this dataset; weights from ``model.checkpoint`` when given."""
    net = create_model(model.name, num_classes=info.num_classes, in_channels=info.in_channels)
    if model.checkpoint is not None:
        try:
            load_weights(net, model.checkpoint)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"{model.checkpoint}: does not fit {model.name}: {e}") from None
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
    setup = Setup(info.num_classes, num_train, **shapes)
    methods = [cls(p.options, setup) for cls, p in zip(classes, parts, strict=True)]
    return Distiller(student, teacher, methods)
