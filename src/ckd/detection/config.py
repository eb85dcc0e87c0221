"""The detection run configuration (``task: detection``): validated like the classification one.

A detection config is told apart by its top-level ``task: detection`` key. It reuses the
project's YAML reading (``_base_`` merging, ``key=value`` overrides) and typed schema; every bad
value raises a one-line :class:`~ckd.errors.ConfigError` naming it and what is allowed.

Schedules count iterations (detectron2 style): ``optim.iters``, ``optim.milestones`` and
``optim.warmup_iters`` are optimisation steps, not epochs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ckd.config import (
    MethodConfig,
    apply_overrides,
    config_name,
    method_from_dict,
    read_yaml,
    resolve_config_path,
    validate_method_and_loading,
    validate_run,
)
from ckd.errors import ConfigError, show
from ckd.schema import build, to_dict

TASK = "detection"
ARCHS = ("faster_rcnn", "mask_rcnn")
BACKBONES = ("resnet18", "resnet50", "resnet101", "mobilenet_v2")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class DetDataConfig:
    name: Literal["coco", "shapes"] = "coco"
    # standard COCO layout: annotations/instances_{split}.json and {split}/ image folders
    root: str = "data/coco"
    train_split: str = "train2017"
    val_split: str = "val2017"
    batch_size: int = 8  # images per optimisation step
    test_batch_size: int = 8
    num_workers: int = 2
    train_subset: int | None = None  # first N (kept) training images; None: all
    val_subset: int | None = None
    flip: bool = True  # random horizontal flip of training images
    # labels: contiguous 1..K over the sorted category ids, or the category ids themselves
    # (what torchvision's COCO weights were trained with: 91 classes)
    labels: Literal["contiguous", "category_id"] = "contiguous"
    # shapes: write the generated dataset into root when it is not there yet
    generate: bool = True


@dataclass
class InputConfig:
    """Image sizes, shared by student and teacher (so the teacher runs on the student's
    resized images and the student's proposals need no mapping)."""

    min_size: list[int] = field(default_factory=lambda: [800])  # training: one drawn per batch
    max_size: int = 1333
    test_min_size: int = 800


@dataclass
class DetectorConfig:
    """Architecture and sampling settings of both detectors (torchvision's defaults)."""

    arch: Literal["faster_rcnn", "mask_rcnn"] = "faster_rcnn"
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512  # RoIs sampled per image for the box head
    box_detections_per_img: int = 100


@dataclass
class DetModelConfig:
    backbone: str  # one of BACKBONES
    checkpoint: str | None = None  # whole-detector weights (teacher: required)
    backbone_checkpoint: str | None = None  # ImageNet classification weights of the backbone
    weights: Literal["coco"] | None = None  # torchvision's COCO weights (online; resnet50)
    image_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    norm: Literal["frozen_bn", "bn"] = "frozen_bn"  # backbone normalisation layers
    trainable_layers: int = 3  # backbone stages trained, counted from the deepest
    width_mult: float = 1.0  # mobilenet_v2 only
    fpn_channels: int = 256
    representation_size: int = 1024  # box head (two-layer MLP) width
    mask_head_channels: int = 256  # mask head (four 3x3 convs) width


@dataclass
class DetOptimConfig:
    iters: int = 90_000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: list[int] = field(default_factory=lambda: [60_000, 80_000])  # iterations
    gamma: float = 0.1
    warmup_iters: int = 1000  # linear warm-up from 0
    min_lr: float = 0.0  # cosine: final learning rate
    log_every: int = 20  # iterations between training-loss rows in metrics.jsonl
    eval_every: int = 10_000  # iterations between evaluations (and at the end)
    checkpoint_every: int = 5000  # iterations between last.pt writes (and at the end)


@dataclass
class DetRunConfig:
    seed: int = 0
    device: str = "auto"
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    out_dir: str | None = None  # default: runs/<config name>/seed<seed>
    tensorboard: bool = True
    progress: bool = True
    eval_teacher: bool = True  # evaluate the teacher once before training
    # Under torchrun: the process-group backend (auto: NCCL with CUDA, gloo on the CPU).
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"


@dataclass
class DetConfig:
    student: DetModelConfig
    method: MethodConfig
    task: Literal["detection"] = TASK
    data: DetDataConfig = field(default_factory=DetDataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    teacher: DetModelConfig | None = None
    optim: DetOptimConfig = field(default_factory=DetOptimConfig)
    run: DetRunConfig = field(default_factory=DetRunConfig)
    description: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = to_dict(self)
        d["method"] = self.method.to_dict()
        return d

    def default_out_dir(self) -> Path:
        return Path("runs") / config_name(self.source or "run") / f"seed{self.run.seed}"


def is_detection(data: dict[str, Any]) -> bool:
    """Whether a config mapping (after ``_base_`` merging and overrides) is a detection one."""
    return data.get("task") == TASK


def det_config_from_dict(data: dict[str, Any]) -> DetConfig:
    from ckd.detection.methods import DET_METHODS

    data = dict(data)
    method = method_from_dict(data.pop("method", None), registry=DET_METHODS)
    cfg = build(DetConfig, data, "", given={"method": method})
    validate(cfg)
    return cfg


def load_det_config(path: str | Path, overrides: list[str] | None = None) -> DetConfig:
    """Read, merge, override and validate a detection config file (or shipped name)."""
    p = resolve_config_path(path)
    data = apply_overrides(read_yaml(p.resolve()), overrides or [])
    data.pop("source", None)
    if not is_detection(data):
        raise ConfigError(f"{p}: not a detection config (needs task: {TASK})")
    cfg = det_config_from_dict(data)
    cfg.source = str(p)
    return cfg


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _validate_model(role: str, m: DetModelConfig) -> None:
    _require(
        m.backbone in BACKBONES,
        f"{role}.backbone: unknown backbone {show(m.backbone)}; known: {', '.join(BACKBONES)}",
    )
    for key in ("checkpoint", "backbone_checkpoint"):
        path = getattr(m, key)
        _require(path is None or Path(path).is_file(), f"{role}.{key}: no file {show(path)}")
    _require(
        m.weights is None or m.backbone == "resnet50",
        f"{role}.weights: torchvision has COCO weights for resnet50 only; got {show(m.backbone)}",
    )
    for key in ("image_mean", "image_std"):
        v = getattr(m, key)
        _require(len(v) == 3, f"{role}.{key} needs 3 values (RGB); got {show(v)}")
    _require(
        all(s > 0 for s in m.image_std), f"{role}.image_std must be > 0; got {show(m.image_std)}"
    )
    top = 5 if m.backbone.startswith("resnet") else 6
    _require(
        0 <= m.trainable_layers <= top,
        f"{role}.trainable_layers must be in [0, {top}] for {m.backbone}; "
        f"got {show(m.trainable_layers)}",
    )
    _require(m.width_mult > 0, f"{role}.width_mult must be > 0; got {show(m.width_mult)}")
    for key in ("fpn_channels", "representation_size", "mask_head_channels"):
        _require(getattr(m, key) >= 1, f"{role}.{key} must be >= 1; got {show(getattr(m, key))}")


def validate(cfg: DetConfig) -> None:
    """Semantic checks beyond types: names, files and ranges."""
    from ckd.detection.methods import DET_METHODS

    d, i, o, r = cfg.data, cfg.input, cfg.optim, cfg.run
    models = {"student": cfg.student, "teacher": cfg.teacher}
    validate_run(
        r,
        {"data.root": d.root}
        | {
            f"{role}.{key}": getattr(m, key)
            for role, m in models.items()
            if m is not None
            for key in ("checkpoint", "backbone_checkpoint")
        },
    )
    _validate_model("student", cfg.student)
    needing = [m.name for m in cfg.method.parts() if DET_METHODS.get(m.name).needs_teacher]
    if needing:
        _require(
            cfg.teacher is not None
            and (cfg.teacher.checkpoint is not None or cfg.teacher.weights is not None),
            f"method {needing[0]!r} needs a teacher: set teacher.backbone and teacher.checkpoint",
        )
    else:
        _require(
            cfg.teacher is None, f"method {cfg.method.name!r} uses no teacher; remove the teacher"
        )
    if cfg.teacher is not None:
        _validate_model("teacher", cfg.teacher)
    validate_method_and_loading(cfg.method, d, ("train_subset", "val_subset"))
    _require(
        not (d.name == "shapes" and d.labels == "category_id"),
        "data.labels: the shapes dataset uses contiguous labels; got 'category_id'",
    )
    _require(
        len(i.min_size) >= 1 and all(s >= 1 for s in i.min_size),
        f"input.min_size must be a non-empty list of sizes >= 1; got {show(i.min_size)}",
    )
    _require(
        i.max_size >= max(i.min_size), f"input.max_size must be >= min_size; got {show(i.max_size)}"
    )
    _require(i.test_min_size >= 1, f"input.test_min_size must be >= 1; got {show(i.test_min_size)}")
    det = cfg.detector
    _require(
        len(det.anchor_sizes) == 5 and all(a > 0 for a in det.anchor_sizes),
        "detector.anchor_sizes needs 5 positive sizes (one per FPN level); "
        f"got {show(det.anchor_sizes)}",
    )
    for key in ("rpn_batch_size_per_image", "box_batch_size_per_image", "box_detections_per_img"):
        _require(
            getattr(det, key) >= 1, f"detector.{key} must be >= 1; got {show(getattr(det, key))}"
        )
    _require(o.iters >= 1, f"optim.iters must be >= 1; got {show(o.iters)}")
    _require(o.lr > 0, f"optim.lr must be > 0; got {show(o.lr)}")
    _require(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1); got {show(o.momentum)}")
    _require(o.weight_decay >= 0, f"optim.weight_decay must be >= 0; got {show(o.weight_decay)}")
    _require(0 < o.gamma <= 1, f"optim.gamma must be in (0, 1]; got {show(o.gamma)}")
    _require(
        0 <= o.warmup_iters < o.iters,
        f"optim.warmup_iters must be in [0, iters={o.iters}); got {show(o.warmup_iters)}",
    )
    _require(
        all(m > 0 for m in o.milestones) and o.milestones == sorted(set(o.milestones)),
        f"optim.milestones must be increasing positive iterations; got {show(o.milestones)}",
    )
    for key in ("log_every", "eval_every", "checkpoint_every"):
        _require(getattr(o, key) >= 1, f"optim.{key} must be >= 1; got {show(getattr(o, key))}")
    _require(
        re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", r.device) is not None,
        f"run.device: expected auto, cpu, cuda, cuda:N or mps; got {show(r.device)}",
    )
