"""A small COCO-format dataset of simple shapes, for tests and the offline detection demo.

Circles, squares and triangles (3 categories) of random colours and sizes on noisy backgrounds,
written as PNG files plus ``annotations/instances_{train2017,val2017}.json`` with boxes and
polygon masks, in COCO's standard layout (:class:`ckd.tasks.detection.data.CocoDetection` reads it).
Shapes do not overlap, so every mask is the whole drawn polygon. A few images hold no shape
(negatives, which training skips as for COCO). Deterministic given the seed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = (
    {"id": 1, "name": "circle"},
    {"id": 2, "name": "square"},
    {"id": 3, "name": "triangle"},
)
SPLITS = ("train2017", "val2017")


class _Shape(TypedDict):
    kind: int  # the category: 1..3
    poly: list[float]  # x0, y0, x1, y1, ...
    box: tuple[float, float, float, float]  # x1, y1, x2, y2


def _polygon(kind: int, cx: float, cy: float, r: float, angle: float) -> list[float]:
    """Flat ``[x0, y0, x1, y1, ...]`` outline of a shape of radius ``r`` centred at (cx, cy)."""
    corners = {1: 24, 2: 4, 3: 3}[kind]
    start = angle if kind != 1 else 0.0
    points = []
    for k in range(corners):
        a = start + 2 * math.pi * k / corners
        points += [cx + r * math.cos(a), cy + r * math.sin(a)]
    return points


def _image(
    rng: np.random.Generator, size: int, max_shapes: int, empty: bool
) -> tuple[Image.Image, list[dict[str, Any]]]:
    base = rng.uniform(40, 215, size=3)
    noise = rng.normal(0, 18, size=(size, size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    placed: list[tuple[float, float, float, float]] = []
    objects: list[_Shape] = []
    count = 0 if empty else int(rng.integers(1, max_shapes + 1))
    for _ in range(count * 20):  # rejection sampling: no two shapes' boxes overlap
        if len(objects) == count:
            break
        kind = int(rng.integers(1, 4))
        r = float(rng.uniform(size * 0.08, size * 0.22))
        cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
        poly = _polygon(kind, float(cx), float(cy), r, float(rng.uniform(0, 2 * math.pi)))
        xs, ys = poly[0::2], poly[1::2]
        box = (min(xs), min(ys), max(xs), max(ys))
        if any(
            b[0] < box[2] + 2 and box[0] < b[2] + 2 and b[1] < box[3] + 2 and box[1] < b[3] + 2
            for b in placed
        ):
            continue
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.polygon(poly, fill=colour)
        placed.append(box)
        objects.append({"kind": kind, "poly": poly, "box": box})
    anns = []
    for o in objects:
        x1, y1, x2, y2 = o["box"]
        w, h = x2 - x1, y2 - y1
        rounded = [round(v, 2) for v in o["poly"]]
        anns.append(
            {
                "category_id": o["kind"],
                "bbox": [round(x1, 2), round(y1, 2), round(w, 2), round(h, 2)],
                "area": _area(o["poly"]),
                "segmentation": [rounded],
                "iscrowd": 0,
            }
        )
    return image, anns


def _area(poly: list[float]) -> float:
    xs, ys = poly[0::2], poly[1::2]
    n = len(xs)
    return round(
        abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2, 2
    )


def make_shapes(
    root: str | Path,
    num_train: int = 300,
    num_val: int = 60,
    size: int = 96,
    max_shapes: int = 3,
    seed: int = 0,
) -> Path:
    """Write the dataset under ``root`` and return ``root``. About one image in 25 is empty.

    Files: ``root/{train2017,val2017}/NNNNNN.png`` (``size x size`` RGB) and
    ``root/annotations/instances_{split}.json`` (COCO format: boxes ``[x, y, w, h]``, polygon
    segmentations, areas, ``iscrowd: 0``, categories circle=1, square=2, triangle=3).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    next_image, next_ann = 1, 1
    for split, count in zip(SPLITS, (num_train, num_val), strict=True):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for k in range(count):
            image, anns = _image(rng, size, max_shapes, empty=k % 25 == 24)
            name = f"{next_image:06d}.png"
            image.save(folder / name)
            images.append({"id": next_image, "file_name": name, "width": size, "height": size})
            for a in anns:
                annotations.append({"id": next_ann, "image_id": next_image, **a})
                next_ann += 1
            next_image += 1
        data = {"images": images, "annotations": annotations, "categories": list(CATEGORIES)}
        out = root / "annotations" / f"instances_{split}.json"
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(out)  # the annotation files last: their presence means a complete dataset
    return root


def shapes_present(root: str | Path) -> bool:
    return all((Path(root) / "annotations" / f"instances_{s}.json").is_file() for s in SPLITS)
