"""Object detection and instance segmentation: COCO-format data, torchvision Faster / Mask
R-CNN student and teacher with FPN, COCO box (and mask) AP.

The methods see a row per RoI sampled for the student's box head and the FPN levels as stage
maps (:class:`~ckd.tasks.detection.view.DetectorView`); the detector's own losses are the task's
loss. Rank 0 alone evaluates (COCOeval needs every detection in one place) and hands the
metrics to the other processes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from ckd.engine.loaders import MicroBatch, StandardLoader
from ckd.engine.runtime import Runtime
from ckd.engine.task import Task, register_task
from ckd.errors import ConfigError
from ckd.methods import Distiller, Shapes
from ckd.methods import build_distiller as assemble
from ckd.tasks.detection.config import DetConfig
from ckd.tasks.detection.data import CocoDetection, Target, collate, val_loader
from ckd.tasks.detection.evaluate import evaluate_detector
from ckd.tasks.detection.models import build_detector
from ckd.tasks.detection.shapes import make_shapes, shapes_present
from ckd.tasks.detection.view import DetectorView, fpn_levels


def build_datasets(cfg: DetConfig) -> tuple[CocoDetection, CocoDetection]:
    """Training and validation sets (the shapes set is generated first when absent)."""
    d = cfg.data
    if d.name == "shapes" and not shapes_present(d.root):
        if not d.generate:
            raise ConfigError(f"data.root: no shapes dataset in {d.root!r} (data.generate=false)")
        make_shapes(d.root, seed=0)
    masks = cfg.detector.arch == "mask_rcnn"
    labels, seed = d.labels, cfg.run.seed
    train = CocoDetection(
        d.root,
        d.train_split,
        True,
        masks,
        flip=d.flip,
        subset=d.train_subset,
        labels=labels,
        seed=seed,
    )
    val = CocoDetection(
        d.root, d.val_split, False, False, subset=d.val_subset, labels=labels, seed=seed
    )
    for key, dataset, n in (("train", train, d.train_subset), ("val", val, d.val_subset)):
        if n is not None and n > dataset.available:
            kept = " with a valid annotation" if key == "train" else ""
            raise ConfigError(
                f"data.{key}_subset={n} but {d.root!r} holds {dataset.available} {key} images"
                f"{kept}; give at most that, or null for all"
            )
    if train.cat_to_label != val.cat_to_label:
        raise ConfigError(f"data: {d.train_split} and {d.val_split} have different categories")
    if len(train) == 0:
        raise ConfigError(f"data: no training image with a valid annotation in {d.root!r}")
    return train, val


def fpn_shapes(model: GeneralizedRCNN, num_classes: int) -> Shapes:
    """The FPN levels' shapes of a detector's backbone on a blank 64x64 image (the channels
    are what methods size their modules by; the sizes follow the images)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        levels = fpn_levels(model.backbone(torch.zeros(1, 3, 64, 64)))
    model.train(was_training)
    return Shapes(tuple(tuple(f.shape[1:]) for f in levels), None, num_classes, stem=False)


def build_distiller(cfg: DetConfig, num_classes: int, num_train: int) -> Distiller:
    """Student and teacher detectors (the teacher's weights loaded) and the methods, which see
    the detectors through :class:`~ckd.tasks.detection.view.DetectorView`."""
    student = build_detector(cfg.student, cfg.detector, cfg.input, num_classes)
    teacher = None
    if cfg.teacher is not None:
        teacher = build_detector(cfg.teacher, cfg.detector, cfg.input, num_classes)
    return assemble(
        cfg.method.parts(),
        student,
        teacher,
        num_classes,
        num_train,
        shapes=lambda net: fpn_shapes(net, num_classes),
        view=DetectorView(),
    )


@register_task("detection")
class Detection(Task):
    Config = DetConfig
    score = "box_AP"
    fixed_shapes = False  # images of varying sizes, a varying number of RoIs per batch

    cfg: DetConfig

    def __init__(self, cfg: DetConfig, runtime: Runtime) -> None:
        self.cfg, self.runtime = cfg, runtime
        d = cfg.data
        self.train_set, self.val_set = build_datasets(cfg)
        self.masks = cfg.detector.arch == "mask_rcnn"
        self.loader = StandardLoader(
            self.train_set,
            d.batch_size,
            d.num_workers,
            cfg.run.seed,
            self._prepare,
            runtime.dist,
            cfg.optim.accum_steps,
            collate=collate,
        )
        self.val = val_loader(self.val_set, d.test_batch_size, d.num_workers)
        self.distiller = build_distiller(cfg, self.train_set.num_classes, len(self.train_set))

    def _prepare(self, batch: tuple[list[torch.Tensor], list[Target], torch.Tensor]) -> MicroBatch:
        images, targets, index = batch
        device = self.runtime.device
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [
            {k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets
        ]
        return MicroBatch(images, targets, index)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        rt = self.runtime
        metrics = None
        if rt.dist.is_main:
            metrics = evaluate_detector(model, self.val, rt.device, rt.amp, self.masks)
        if rt.dist.distributed:
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        assert metrics is not None
        return metrics

    def describe(self) -> str:
        cfg, d = self.cfg, self.distiller
        return (
            f"{cfg.detector.arch}, student {cfg.student.backbone} "
            f"({sum(p.numel() for p in d.student.parameters()):,} parameters), {cfg.data.name} "
            f"{len(self.train_set)} train / {len(self.val_set)} val images"
        )

    def format_metrics(self, m: dict[str, float]) -> str:
        text = f"box AP {m['box_AP']:.2f} (AP50 {m['box_AP50']:.2f}, AP75 {m['box_AP75']:.2f})"
        if "mask_AP" in m:
            text += f", mask AP {m['mask_AP']:.2f} (AP50 {m['mask_AP50']:.2f})"
        return text

    def model_names(self) -> tuple[str, str | None]:
        teacher = self.cfg.teacher
        return self.cfg.student.backbone, teacher.backbone if teacher is not None else None
