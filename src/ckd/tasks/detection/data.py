"""COCO-format detection data through pycocotools, and a resumable training loader.

Layout (COCO's own): ``root/annotations/instances_{split}.json`` and ``root/{split}/<file_name>``.
Bad annotations are handled as torchvision's detection references do: crowd annotations and
boxes with width or height <= 1 (after clipping to the image) are dropped, and training skips
images left with no annotation; evaluation keeps every image.

A sample is ``(image [3, H, W] float in [0, 1], target)`` with target ``boxes [N, 4]`` (x1, y1,
x2, y2 pixels, float32), ``labels [N]`` (int64, 1..K; 0 is background), ``image_id`` (int) and,
with masks, ``masks [N, H, W]`` (uint8).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ckd.data.base import DataNotFoundError

if TYPE_CHECKING:  # pycocotools is imported when a dataset is read
    from pycocotools.coco import COCO

Target = dict[str, Any]


def _quiet_coco(annotation_file: Path) -> COCO:
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints timings
        return COCO(str(annotation_file))


def _valid(ann: dict[str, Any], width: int, height: int) -> bool:
    """A non-crowd annotation whose box, clipped to the image, is wider and taller than 1."""
    if ann.get("iscrowd", 0):
        return False
    x, y, w, h = ann["bbox"]
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, float(width)), min(y + h, float(height))
    return bool((x2 - x1) > 1 and (y2 - y1) > 1)


class CocoDetection(Dataset[tuple[torch.Tensor, Target]]):
    """One split of a COCO-format dataset (see the module docstring for what a sample holds).

    Args:
        root: the dataset folder.
        split: ``train2017``, ``val2017``, ...
        train: drop images without a valid annotation, and flip at random when ``flip``.
        masks: also return the instance masks (Mask R-CNN).
        labels: ``contiguous`` (1..K over the sorted category ids) or ``category_id``.
        seed: training flips are drawn from ``(seed, epoch, index)``, so they do not depend on
            the worker that loads the sample (exact resume); :meth:`set_epoch` sets the epoch.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        train: bool = False,
        masks: bool = False,
        labels: str = "contiguous",
        flip: bool = False,
        subset: int | None = None,
        seed: int = 0,
    ) -> None:
        root = Path(root)
        ann_file = root / "annotations" / f"instances_{split}.json"
        if not ann_file.is_file():
            raise DataNotFoundError(f"no COCO annotations {ann_file} (data.root={str(root)!r})")
        self.image_dir = root / split
        self.coco = _quiet_coco(ann_file)
        cat_ids = sorted(self.coco.getCatIds())
        if labels == "contiguous":
            self.cat_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
            self.num_classes = len(cat_ids) + 1
        else:
            self.cat_to_label = {c: c for c in cat_ids}
            self.num_classes = max(cat_ids, default=0) + 1
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        ids = sorted(self.coco.getImgIds())
        if train:  # torchvision references: skip images without a usable annotation
            ids = [i for i in ids if any(self._anns(i))]
        self.available = len(ids)  # before the subset
        self.ids = ids[:subset] if subset is not None else ids
        self.train, self.masks, self.flip, self.seed = train, masks, flip, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _anns(self, image_id: int) -> list[dict[str, Any]]:
        info = self.coco.imgs[image_id]
        anns = self.coco.imgToAnns.get(image_id, [])
        return [
            a
            for a in anns
            if _valid(a, info["width"], info["height"]) and a["category_id"] in self.cat_to_label
        ]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        with Image.open(self.image_dir / info["file_name"]) as im:
            array = np.asarray(im.convert("RGB"), dtype=np.uint8)
        image = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)
        h, w = image.shape[-2:]
        anns = self._anns(image_id)
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        target: Target = {
            "boxes": boxes,
            "labels": torch.tensor([self.cat_to_label[a["category_id"]] for a in anns]).long(),
            "image_id": image_id,
        }
        if self.masks:
            m = [self.coco.annToMask(a) for a in anns]
            target["masks"] = torch.from_numpy(np.stack(m) if m else np.zeros((0, h, w), np.uint8))
        if self.train and self.flip and self._flips(index):
            image = image.flip(-1)
            boxes = target["boxes"]
            target["boxes"] = torch.stack(
                [w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1
            )
            if self.masks:
                target["masks"] = target["masks"].flip(-1)
        return image, target

    def _flips(self, index: int) -> bool:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_033 + index)
        return bool(torch.rand((), generator=g) < 0.5)


def collate(batch: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Detection batches are lists: images of different sizes, targets of different lengths
    (and, for indexed training items, the samples' indices as a tensor)."""
    images, targets, *index = zip(*batch, strict=True)
    return (list(images), list(targets), *(torch.tensor(i) for i in index))


def val_loader(
    dataset: CocoDetection, batch_size: int, num_workers: int
) -> DataLoader[tuple[torch.Tensor, Target]]:
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
    )
