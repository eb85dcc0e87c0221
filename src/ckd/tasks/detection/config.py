"""The detection task's config sections (``task: detection``): data, input sizes, detector
settings and the detector models; ``method``, ``optim`` and ``run`` are the shared ones of
:mod:`ckd.config`. Schedules count iterations by default (detectron2 style: ``optim.iters``,
milestones and ``optim.warmup_iters`` in optimisation steps; see ``SECTION_DEFAULTS``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ckd.config import BaseConfig, DataSection
from ckd.errors import require, show
from ckd.paths import input_file_problem

ARCHS = ("faster_rcnn", "mask_rcnn")
BACKBONES = ("resnet18", "resnet50", "resnet101", "mobilenet_v2")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class DetDataConfig(DataSection):
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


@dataclass(kw_only=True)
class DetConfig(BaseConfig):
    """A detection run: COCO-format data, Faster / Mask R-CNN student and teacher."""

    SECTION_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "optim": {
            "iters": 90_000,
            "lr": 0.01,
            "weight_decay": 1e-4,
            "milestones": [60_000, 80_000],
            "warmup_iters": 1000,
        },
        "run": {"log_every": 20, "eval_every": 10_000, "checkpoint_every": 5000},
    }
    ORDER: ClassVar[tuple[str, ...]] = (
        "task", "description", "data", "input", "detector", "student", "teacher",
    )  # fmt: skip

    task: Literal["detection"] = "detection"
    student: DetModelConfig
    data: DetDataConfig = field(default_factory=DetDataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    teacher: DetModelConfig | None = None

    def paths(self) -> dict[str, str | None]:
        models = {"student": self.student, "teacher": self.teacher}
        return {
            **super().paths(),
            "data.root": self.data.root,
            **{
                f"{role}.{key}": getattr(m, key)
                for role, m in models.items()
                if m is not None
                for key in ("checkpoint", "backbone_checkpoint")
            },
        }

    def validate(self) -> None:
        d, i, r = self.data, self.input, self.run
        for role in ("student", "teacher"):
            if getattr(self, role) is not None:
                _validate_model(role, getattr(self, role))
        for key in ("train_subset", "val_subset"):
            v = getattr(d, key)
            require(v is None or v >= 1, f"data.{key} must be >= 1 or null; got {show(v)}")
        require(
            not (d.name == "shapes" and d.labels == "category_id"),
            "data.labels: the shapes dataset uses contiguous labels; got 'category_id'",
        )
        require(
            len(i.min_size) >= 1 and all(s >= 1 for s in i.min_size),
            f"input.min_size must be a non-empty list of sizes >= 1; got {show(i.min_size)}",
        )
        require(
            i.max_size >= max(i.min_size),
            f"input.max_size must be >= min_size; got {show(i.max_size)}",
        )
        require(
            i.test_min_size >= 1, f"input.test_min_size must be >= 1; got {show(i.test_min_size)}"
        )
        det = self.detector
        require(
            len(det.anchor_sizes) == 5 and all(a > 0 for a in det.anchor_sizes),
            "detector.anchor_sizes needs 5 positive sizes (one per FPN level); "
            f"got {show(det.anchor_sizes)}",
        )
        for key in ("rpn_batch_size_per_image", "box_batch_size_per_image"):
            require(
                getattr(det, key) >= 1,
                f"detector.{key} must be >= 1; got {show(getattr(det, key))}",
            )
        require(
            det.box_detections_per_img >= 1,
            f"detector.box_detections_per_img must be >= 1; got {show(det.box_detections_per_img)}",
        )
        require(r.teacher_cache is None, "run.teacher_cache is for classification; set it to null")
        require(
            r.compile is False,
            "run.compile: a detector's distillation reads its RoIs and FPN levels through hooks, "
            "which torch.compile would retrace every step; set run.compile=false",
        )
        require(
            not any(getattr(m.options, "global_negatives", False) for m in self.method.parts()),
            "method.global_negatives is for classification (RoI counts differ between "
            "processes); set it to false",
        )

    def check_files(self) -> None:
        for role in ("student", "teacher"):
            m = getattr(self, role)
            if m is None:
                continue
            for key in ("checkpoint", "backbone_checkpoint"):
                path = getattr(m, key)
                problem = None if path is None else input_file_problem(f"{role}.{key}", path)
                require(problem is None, problem or "")


def _validate_model(role: str, m: DetModelConfig) -> None:
    require(
        m.backbone in BACKBONES,
        f"{role}.backbone: unknown backbone {show(m.backbone)}; known: {', '.join(BACKBONES)}",
    )
    require(
        m.weights is None or m.backbone == "resnet50",
        f"{role}.weights: torchvision has COCO weights for resnet50 only; got {show(m.backbone)}",
    )
    for key in ("image_mean", "image_std"):
        v = getattr(m, key)
        require(len(v) == 3, f"{role}.{key} needs 3 values (RGB); got {show(v)}")
    require(
        all(s > 0 for s in m.image_std), f"{role}.image_std must be > 0; got {show(m.image_std)}"
    )
    top = 5 if m.backbone.startswith("resnet") else 6
    require(
        0 <= m.trainable_layers <= top,
        f"{role}.trainable_layers must be in [0, {top}] for {m.backbone}; "
        f"got {show(m.trainable_layers)}",
    )
    require(m.width_mult > 0, f"{role}.width_mult must be > 0; got {show(m.width_mult)}")
    for key in ("fpn_channels", "representation_size", "mask_head_channels"):
        require(getattr(m, key) >= 1, f"{role}.{key} must be >= 1; got {show(getattr(m, key))}")
