"""Image classification: a labelled image dataset, classifier student and teacher, top-1/top-5.

The config's ``data`` names a dataset of :mod:`ckd.data` and ``student`` / ``teacher`` models
of :mod:`ckd.models` (zoo, ``tv:``, ``timm:``); the methods see a row per image
(:class:`~ckd.methods.base.ClassifierView`). ``data.loader`` picks the training input: the
dataset's transforms in DataLoader workers (``standard``) or the split held in memory and
augmented on the device (``fast``, :class:`~ckd.engine.loaders.MemoryLoader`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ckd.config import Config, DataConfig, ModelConfig
from ckd.data import DatasetInfo, resolve_dataset, subset
from ckd.data.fast import memory_data
from ckd.engine.distributed import shard
from ckd.engine.evaluate import evaluate
from ckd.engine.loaders import MemoryLoader, MicroBatch, StandardLoader, memory_batches
from ckd.errors import CheckpointError, ConfigError
from ckd.methods import METHODS, Distiller, Setup, Shapes
from ckd.methods.base import network_shapes
from ckd.models import Renormalize, create_model, is_external, load_weights
from ckd.models.pretrained import create_pretrained
from ckd.schema import build
from ckd.tasks import TASKS, Task


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
        except CheckpointError:
            raise  # names the file: not a checkpoint at all
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
    if any(c.needs_features or c.needs_preact for c in classes):
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


def datasets(cfg: Config) -> tuple[DatasetInfo, Any, Any]:
    """The dataset's facts and its training (augmented, subset) and test splits."""
    d = cfg.data
    spec = resolve_dataset(d)  # a folder dataset reads its classes, channels, size here
    assert spec.info is not None
    info = spec.info
    train = spec.build(d.root, True, d.augment, d.download, d.verify)
    test = spec.build(d.root, False, False, d.download, d.verify)
    for split, dataset, n in (("train", train, d.train_subset), ("test", test, d.test_subset)):
        if n is not None and n > len(dataset):
            raise ConfigError(
                f"data.{split}_subset={n} but the {split} split of {d.name} holds "
                f"{len(dataset)} images; give at most that, or null for all"
            )
    seed = cfg.run.seed
    return info, subset(train, d.train_subset, seed=seed), subset(test, d.test_subset, seed=seed)


class CheckpointData(NamedTuple):
    """What :func:`checkpoint_model` finds for a checkpoint."""

    model: nn.Module
    model_name: str
    data_name: str
    test: Any  # the test set chosen
    test_set: str  # which one, in words


def checkpoint_model(
    path: str | Path,
    model: str | None = None,
    data: str | None = None,
    data_root: str | None = None,
    test_subset: int | None = None,
    full_test: bool = False,
) -> CheckpointData:
    """The model of a checkpoint (or a run folder's ``last.pt``) and a test set: what its saved
    config says (model, input normalisation, dataset), or ``model`` / ``data`` for a foreign
    one (a reference teacher file, a torchvision ``.pth``).

    The test set is the run's own (its ``data.test_subset`` drawn with its ``run.seed``, as the
    run reported on), or with ``full_test`` (or for a foreign checkpoint, or another dataset
    than the run's) the whole test split, or with ``test_subset`` a class-balanced subset of
    that many images (seed 0).
    """
    from ckd.engine.checkpoint import load_checkpoint
    from ckd.export import find_checkpoint
    from ckd.models import MODELS

    if test_subset is not None and (full_test or test_subset < 1):
        raise ConfigError(
            f"--subset {test_subset}: give a number of images >= 1, or --full-test, not both"
            if full_test
            else f"--subset must be >= 1; got {test_subset}"
        )
    path = find_checkpoint(path)
    try:
        ckpt = load_checkpoint(path)
    except Exception as e:  # not a checkpoint, or one weights_only refuses to unpickle
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: cannot be read as a checkpoint: {reason[:200]}") from None
    saved = ckpt.get("config") or {}
    student = dict(saved.get("student") or {})
    saved_data = dict(saved.get("data") or {})
    model_name = model or student.get("name")
    data_name = data or saved_data.get("name")
    if model_name is None or data_name is None:
        from ckd.data import DATASETS

        raise ConfigError(
            f"{path} carries no config: give --model (a zoo, tv: or timm: model) and --data "
            f"(one of {', '.join(DATASETS)})"
        )
    MODELS.get(model_name)
    same = model_name == student.get("name")
    model_cfg = ModelConfig(
        model_name,
        str(path),
        input_mean=student.get("input_mean") if same else None,
        input_std=student.get("input_std") if same else None,
    )
    root = data_root if data_root is not None else saved_data.get("root")
    # the run's own data settings (a folder's image size, channels, split), for its dataset
    own = {k: v for k, v in saved_data.items() if k in DataConfig.__dataclass_fields__}
    same_data = data_name == saved_data.get("name")
    spec = resolve_dataset(
        build(DataConfig, {**(own if same_data else {}), "name": data_name, "root": root}, "data")
    )
    assert spec.info is not None
    net = build_model(model_cfg, spec.info)
    split = spec.build(root, False, False, False)
    test, test_set = _test_set(split, test_subset, full_test, same_data, saved)
    return CheckpointData(net, model_name, data_name, test, test_set)


def _test_set(
    split: Any, n: int | None, full: bool, same_data: bool, saved: dict[str, Any]
) -> tuple[Any, str]:
    """The test set :func:`checkpoint_model` evaluates on, and its description."""
    size = len(split)
    if n is not None:
        chosen = subset(split, n)
        return chosen, f"a subset, {len(chosen)} of {size} images, seed 0"
    run_subset = (saved.get("data") or {}).get("test_subset")
    if full or not same_data or run_subset is None or run_subset >= size:
        return split, f"the whole split, {size} images"
    seed = (saved.get("run") or {}).get("seed", 0)
    chosen = subset(split, run_subset, seed=seed)
    return chosen, (
        f"the run's test subset, {len(chosen)} of {size} images, seed {seed}; --full-test for all"
    )


def evaluate_checkpoint(
    path: str | Path,
    model: str | None = None,
    data: str | None = None,
    data_root: str | None = None,
    test_subset: int | None = None,
    full_test: bool = False,
    batch_size: int = 256,
    device: str = "auto",
    amp: str = "none",
) -> tuple[CheckpointData, dict[str, float]]:
    """``ckd eval``: the checkpoint's model (:func:`checkpoint_model`) and its top-1, top-5,
    loss and number of images on the test set chosen there."""
    from ckd.engine.runtime import amp_dtype, pick_device

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1; got {batch_size}")
    found = checkpoint_model(path, model, data, data_root, test_subset, full_test)
    where = pick_device(device)
    loader = DataLoader(found.test, batch_size=batch_size, num_workers=0)
    return found, evaluate(found.model.to(where), loader, where, amp_dtype(amp, where))


@TASKS.register("classification")
class Classification(Task):
    Config = Config
    score = "top1"

    def __init__(self, cfg: Config, runtime: Any) -> None:
        self.cfg, self.runtime = cfg, runtime
        d, rt = cfg.data, runtime
        self.info, train, test = datasets(cfg)
        accum = cfg.optim.accum_steps
        if d.loader == "fast":
            self.memory = memory_data(train, rt.device, d.name)
            test_memory = memory_data(test, rt.device, d.name)
            self.loader: Any = MemoryLoader(
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

            def test_batches():
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
            share = test if not rt.dist.distributed else Subset(test, shard(len(test), rt.dist))
            self.test = DataLoader(
                share, batch_size=d.test_batch_size, num_workers=d.num_workers, pin_memory=cuda
            )
        self.num_test = len(test)
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

    def __init__(self, make: Any) -> None:
        self.make = make

    def __iter__(self) -> Any:
        return iter(self.make())
