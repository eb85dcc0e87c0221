"""COCO box and mask AP of a detector with the official ``pycocotools`` COCOeval.

Metrics (percent, as COCO reports them x 100): ``box_AP``, ``box_AP50``, ``box_AP75``,
``box_APs``, ``box_APm``, ``box_APl`` and, for Mask R-CNN, the same six with ``mask_``. A metric
without ground truth (e.g. ``APl`` on a set without large objects) is -1, as COCOeval says.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from ckd.tasks.detection.data import CocoDetection, Target

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _results(
    output: dict[str, torch.Tensor], image_id: int, label_to_cat: dict[int, int], masks: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """COCO result entries of one image: boxes ``[x, y, w, h]`` and thresholded RLE masks."""
    boxes = output["boxes"].float().cpu()
    boxes[:, 2:] -= boxes[:, :2]
    scores, labels = output["scores"].float().cpu().tolist(), output["labels"].cpu().tolist()
    box_rows, mask_rows = [], []
    for box, score, label in zip(boxes.tolist(), scores, labels, strict=True):
        row = {"image_id": image_id, "category_id": label_to_cat[label], "score": score}
        box_rows.append({**row, "bbox": box})
    if masks and len(labels):
        binary = (output["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)  # [N, H, W]
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for r, row in zip(rles, box_rows, strict=True):
            r["counts"] = r["counts"].decode("ascii")
            mask_rows.append({k: v for k, v in row.items() if k != "bbox"} | {"segmentation": r})
    return box_rows, mask_rows


def coco_stats(dataset: CocoDetection, results: list[dict[str, Any]], iou_type: str) -> list[float]:
    """The six COCOeval summary numbers of ``results`` on ``dataset``'s images (x 100)."""
    if not results:
        return [0.0] * len(STATS)
    with contextlib.redirect_stdout(io.StringIO()):
        detections = dataset.coco.loadRes(results)
        ev = COCOeval(dataset.coco, detections, iou_type)
        ev.params.imgIds = list(dataset.ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(100.0 * s) if s >= 0 else -1.0 for s in ev.stats[: len(STATS)]]


@torch.no_grad()
def evaluate_detector(
    model: GeneralizedRCNN,
    loader: DataLoader[tuple[torch.Tensor, Target]],
    device: torch.device,
    amp: torch.dtype | None = None,
    masks: bool = False,
) -> dict[str, float]:
    """Box (and mask) AP of ``model`` on the loader's :class:`CocoDetection` set; ``model`` is
    put in eval mode (the caller restores training mode)."""
    dataset = loader.dataset
    assert isinstance(dataset, CocoDetection)  # as val_loader makes it
    model.eval()
    box_rows: list[dict[str, Any]] = []
    mask_rows: list[dict[str, Any]] = []
    for images, targets in loader:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            outputs = model([im.to(device, non_blocking=True) for im in images])
        for out, target in zip(outputs, targets, strict=True):
            b, m = _results(out, target["image_id"], dataset.label_to_cat, masks)
            box_rows += b
            mask_rows += m
    row = dict(zip([f"box_{s}" for s in STATS], coco_stats(dataset, box_rows, "bbox"), strict=True))
    if masks:
        stats = coco_stats(dataset, mask_rows, "segm")
        row |= dict(zip([f"mask_{s}" for s in STATS], stats, strict=True))
    row["detections"] = float(len(box_rows))
    return row
