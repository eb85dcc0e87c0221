"""Detection test helpers (shared by the detection tests and the README's one-file method test):
tiny Mask / Faster R-CNN configs on 64x64 generated shapes, a random teacher and its config
section."""

from __future__ import annotations

from pathlib import Path

import torch

from ckd.tasks.detection.config import DetModelConfig
from ckd.tasks.detection.models import build_detector

NUM_CLASSES = 4  # 3 shapes + background


def tiny_model(backbone: str = "resnet18", channels: int = 16, **kw) -> dict:
    m = dict(backbone=backbone, fpn_channels=channels, representation_size=32)
    return {**m, "mask_head_channels": 16, "trainable_layers": 5, **kw}


def tiny_config(root: Path, out_dir: Path, method: dict, teacher: dict | None = None) -> dict:
    """A mask_rcnn config: 64x64 images, tiny heads, a few iterations on the CPU."""
    cfg = {
        "task": "detection",
        "data": {
            "name": "shapes",
            "root": str(root),
            "batch_size": 2,
            "test_batch_size": 6,
            "num_workers": 0,
            "generate": False,
        },
        "input": {"min_size": [64], "max_size": 64, "test_min_size": 64},
        "detector": {
            "arch": "mask_rcnn",
            "anchor_sizes": [8, 16, 32, 64, 128],
            "rpn_pre_nms_top_n_train": 100,
            "rpn_post_nms_top_n_train": 50,
            "rpn_pre_nms_top_n_test": 100,
            "rpn_post_nms_top_n_test": 50,
            "rpn_batch_size_per_image": 32,
            "box_batch_size_per_image": 16,
            "box_detections_per_img": 10,
        },
        "student": tiny_model("mobilenet_v2", 16, width_mult=0.25, trainable_layers=6),
        "method": method,
        "optim": {"iters": 4, "lr": 0.01, "milestones": [3], "warmup_iters": 1},
        "run": {
            "log_every": 1,
            "eval_every": 4,
            "checkpoint_every": 100,
            "device": "cpu",
            "amp": "none",
            "out_dir": str(out_dir),
            "tensorboard": False,
            "progress": False,
        },
    }
    if teacher is not None:
        cfg["teacher"] = teacher
    return cfg


def random_teacher(folder: Path, arch: str) -> Path:
    """A random teacher with BatchNorm (buffers to watch), saved as ``folder/<arch>.pt``."""
    from ckd.tasks.detection.config import DetectorConfig, InputConfig

    m = DetModelConfig(**tiny_model("resnet18", 32, norm="bn"))
    size = InputConfig(min_size=[64], max_size=64, test_min_size=64)
    torch.manual_seed(1)
    net = build_detector(m, DetectorConfig(arch=arch), size, NUM_CLASSES)
    torch.save({"model": net.state_dict()}, folder / f"{arch}.pt")
    return folder / f"{arch}.pt"


def teacher_section(path: Path) -> dict:
    return {
        **tiny_model("resnet18", 32, norm="bn"),
        "checkpoint": str(path),
        "image_mean": [0.5, 0.4, 0.3],
        "image_std": [0.2, 0.25, 0.3],
    }


CKD_REVIEW = {"name": "ckd", "also": [{"name": "reviewkd"}]}
