"""The fast input path: an in-memory dataset as one uint8 tensor, augmented a batch at a time.

The standard path runs torchvision's per-image transforms (PIL for CIFAR) in DataLoader workers.
Here the training set is held once as a uint8 tensor ``[N, C, H, W]`` on the run's device (the
GPU when there is one), and random crop with zero padding, horizontal flip, the conversion to
float and the normalisation are applied to whole batches on that device by tensor indexing: no
per-sample Python.

What is computed is what the standard transforms compute. :func:`replay_spec` reads the
dataset's own ``transforms.Compose`` (``Pad``, ``RandomCrop``, ``RandomHorizontalFlip``,
``ToTensor``, ``Normalize``) and refuses any step it cannot replay, so the two paths cannot drift
apart. For given crop offsets and flip, a fast image equals the standard transform's output
bit for bit (same float operations in the same order); offsets are uniform over the same range
as ``RandomCrop.get_params`` and flips have the same probability (tested).

The augmentation of sample ``i`` in epoch ``e`` is a function of ``(aug_seed, e, i)`` alone:
:func:`draw_augmentation` draws the parameters of all ``N`` samples at once from a counter-based
Philox generator keyed by ``(aug_seed, e)``, indexed by sample rather than by position in the
shuffled order. The teacher cache (:mod:`ckd.engine.cache`) relies on this to replay every view
exactly, whatever the batch size, shuffle order or run seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision import transforms as T

from ckd.data.transforms import _to_float
from ckd.errors import ConfigError

#: Name of the generator recorded with a cache; change it if :func:`draw_augmentation` changes.
GENERATOR = "numpy-philox/v1"


@dataclasses.dataclass(frozen=True)
class Augment:
    """What the dataset's transform does after the stored image, in replayable form.

    ``pre_pad`` is applied once when the data is loaded (Fashion-MNIST's 28 -> 32 padding); the
    rest per batch: zero-``fill`` padding by ``crop_padding``, a crop of ``size`` at a uniform
    offset, a horizontal flip with probability ``flip_p``, ``/255`` and ``(x - mean) / std``.
    """

    image: tuple[int, int]  # stored image (after pre_pad)
    size: tuple[int, int]  # output (crop) size
    pre_pad: int = 0
    crop_padding: int = 0
    crop: bool = False
    fill: int = 0
    flip_p: float = 0.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def random(self) -> bool:
        return self.crop or self.flip_p > 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image"], d["size"] = list(self.image), list(self.size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def _pair(v: Any, what: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    if isinstance(v, Sequence) and len(v) in (1, 2):
        return (int(v[0]), int(v[-1]))
    raise ValueError(f"{what} {v!r}")


def _uniform_pad(v: Any, what: str) -> int:
    if isinstance(v, int):
        return v
    if isinstance(v, Sequence) and len(v) >= 1 and len(set(v)) == 1:
        return int(v[0])
    raise ValueError(f"non-uniform {what} {v!r}")


def _fill(v: Any) -> int:
    if isinstance(v, int | float) and float(v).is_integer():
        return int(v)
    if isinstance(v, Sequence) and len(set(v)) == 1:
        return _fill(v[0])
    raise ValueError(f"fill {v!r}")


def replay_spec(transform: Any, image_size: tuple[int, int]) -> Augment:
    """Read a ``transforms.Compose`` of the standard path into an :class:`Augment`.

    Allowed, in this order: ``Pad`` (constant), ``RandomCrop`` (constant padding, no
    ``pad_if_needed``), ``RandomHorizontalFlip``, ``ToTensor`` (or this package's uint8 -> float
    step), ``Normalize``. Anything else raises ``ValueError`` naming the step.
    """
    steps = list(getattr(transform, "transforms", [transform]))
    order = ["Pad", "RandomCrop", "RandomHorizontalFlip", "ToFloat", "Normalize"]
    seen: list[str] = []
    h, w = image_size
    fields: dict[str, Any] = {}
    for step in steps:
        if isinstance(step, T.Pad):
            kind = "Pad"
            if step.padding_mode != "constant" or _fill(step.fill) != 0:
                raise ValueError(f"Pad with mode {step.padding_mode!r}, fill {step.fill!r}")
            fields["pre_pad"] = _uniform_pad(step.padding, "Pad padding")
            h, w = h + 2 * fields["pre_pad"], w + 2 * fields["pre_pad"]
        elif isinstance(step, T.RandomCrop):
            kind = "RandomCrop"
            if step.padding_mode != "constant" or step.pad_if_needed:
                raise ValueError(f"RandomCrop with mode {step.padding_mode!r} / pad_if_needed")
            fields["crop"] = True
            fields["crop_padding"] = _uniform_pad(step.padding or 0, "RandomCrop padding")
            fields["fill"] = _fill(step.fill)
            fields["size"] = _pair(step.size, "RandomCrop size")
        elif isinstance(step, T.RandomHorizontalFlip):
            kind = "RandomHorizontalFlip"
            fields["flip_p"] = float(step.p)
        elif isinstance(step, T.ToTensor) or step is _to_float:
            kind = "ToFloat"
        elif isinstance(step, T.Normalize):
            kind = "Normalize"
            fields["mean"] = tuple(float(m) for m in step.mean)
            fields["std"] = tuple(float(s) for s in step.std)
        else:
            raise ValueError(f"transform step {step!r}")
        if kind in seen or any(order.index(k) > order.index(kind) for k in seen):
            raise ValueError(f"transform order {[*seen, kind]}")
        seen.append(kind)
    if "ToFloat" not in seen:
        raise ValueError("a transform without the uint8 -> float step")
    fields.setdefault("size", (h, w))
    pad = fields.get("crop_padding", 0)
    if fields["size"][0] > h + 2 * pad or fields["size"][1] > w + 2 * pad:
        raise ValueError(f"crop {fields['size']} larger than the padded {h}x{w} image")
    return Augment(image=(h, w), **fields)


@dataclasses.dataclass
class MemoryData:
    """A dataset split held as ``images`` uint8 ``[N, C, H, W]`` (already ``pre_pad``-ded) and
    ``targets`` int64 ``[N]``, both on ``device``, with the augmentation to apply."""

    images: Tensor
    targets: Tensor
    augment: Augment
    fingerprint: str  # sha256 of the uint8 images and the targets

    def __post_init__(self) -> None:  # made once: a per-batch host-to-device copy would sync
        device = self.images.device
        self.mean = torch.tensor(self.augment.mean, dtype=torch.float32, device=device).view(
            -1, 1, 1
        )
        self.std = torch.tensor(self.augment.std, dtype=torch.float32, device=device).view(-1, 1, 1)

    def __len__(self) -> int:
        return int(self.targets.numel())

    @property
    def device(self) -> torch.device:
        return self.images.device


def _unwrap(dataset: Dataset) -> tuple[Any, np.ndarray | None]:
    """The innermost dataset and the indices of ``dataset``'s items in it (None: all)."""
    indices: np.ndarray | None = None
    ds: Any = dataset
    while True:
        if isinstance(ds, Subset):
            here = np.asarray(ds.indices, dtype=np.int64)
            indices = here if indices is None else here[indices]
            ds = ds.dataset
        elif not hasattr(ds, "data") and hasattr(ds, "dataset"):  # IndexedDataset and the like
            ds = ds.dataset
        else:
            return ds, indices


def _as_nchw(data: Any) -> Tensor:
    """torchvision CIFAR's ``[N, H, W, C]`` ndarray or an MNIST-style ``[N, H, W]`` tensor."""
    t = torch.from_numpy(np.ascontiguousarray(data)) if isinstance(data, np.ndarray) else data
    if not isinstance(t, Tensor) or t.dtype != torch.uint8:
        raise ValueError("its .data is not a uint8 array")
    if t.dim() == 3:
        return t.unsqueeze(1)
    if t.dim() == 4 and t.shape[-1] in (1, 3):
        return t.permute(0, 3, 1, 2)
    raise ValueError(f"its .data has shape {tuple(t.shape)}")


#: Share of the free memory (host, or the GPU's) that the fast path may fill with a dataset
#: read from files.
MEMORY_SHARE = 0.5


def free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (the host's available memory for the CPU); None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits(nbytes: int, device: torch.device) -> None:
    free = free_memory(device)
    if free is not None and nbytes > MEMORY_SHARE * free:
        raise ValueError(
            f"its images need {nbytes / 2**30:.1f} GiB as uint8, more than "
            f"{MEMORY_SHARE:.0%} of the {free / 2**30:.1f} GiB free on {device.type}"
        )


def memory_data(dataset: Dataset, device: torch.device | str = "cpu", name: str = "") -> MemoryData:
    """Hold ``dataset`` (a split of an in-memory dataset, possibly a subset, possibly wrapped
    by the engine's ``IndexedDataset``) as a :class:`MemoryData` on ``device``.

    A dataset kept as files (one with ``read_uint8``, ``stored_size`` and ``mode``: the
    ``folder`` dataset) is decoded here, once, after its transform and the memory it needs
    (at most :data:`MEMORY_SHARE` of the free memory) were checked.

    Raises:
        ConfigError: the dataset keeps no uint8 ``.data``, has a transform that cannot be
            replayed on the device, or would not fit (use ``data.loader=standard`` then).
    """
    base, indices = _unwrap(dataset)
    what = name or type(base).__name__
    files = hasattr(base, "read_uint8")  # kept as files (folder): decoded here, once
    targets = torch.as_tensor(np.asarray(base.targets, dtype=np.int64))
    if indices is not None:
        targets = targets[torch.from_numpy(indices)]
    try:
        if files:  # check the transform and the memory before decoding every file
            size = base.stored_size
            if size is None:
                raise ValueError(
                    "its training images are cut by random resized crops (ImageNet style, "
                    "image_size > 64), which the fast path does not replay"
                )
            aug = replay_spec(base.transform, (size, size))
            channels = 1 if base.mode == "L" else 3
            _check_fits(len(targets) * channels * size * size, torch.device(device))
        else:
            images = _as_nchw(getattr(base, "data", None))
            aug = replay_spec(
                getattr(base, "transform", None), (images.shape[-2], images.shape[-1])
            )
    except ValueError as e:
        raise ConfigError(
            f"data.loader=fast: {what} cannot be held in memory and replayed on the device "
            f"({e}); use data.loader=standard"
        ) from None
    if files:
        images = _as_nchw(torch.from_numpy(base.read_uint8(indices)))
    elif indices is not None:
        images = images[torch.from_numpy(indices)]
    images = images.contiguous()
    if aug.pre_pad:
        images = F.pad(images, [aug.pre_pad] * 4, value=0)
    digest = hashlib.sha256()
    digest.update(repr((tuple(images.shape), tuple(targets.shape))).encode())
    digest.update(images.numpy().data)
    digest.update(targets.numpy().data)
    return MemoryData(images.to(device), targets.to(device), aug, fingerprint=digest.hexdigest())


@dataclasses.dataclass
class AugParams:
    """Per-sample augmentation of one epoch: crop offsets ``dy``, ``dx`` (int64 ``[N]``) into
    the padded image and ``flip`` (bool ``[N]``), indexed by sample."""

    dy: Tensor
    dx: Tensor
    flip: Tensor

    def to(self, device: torch.device | str) -> AugParams:
        return AugParams(self.dy.to(device), self.dx.to(device), self.flip.to(device))


def draw_augmentation(aug: Augment, n: int, seed: int, epoch: int) -> AugParams:
    """The augmentation of all ``n`` samples in ``epoch``, from a Philox generator keyed by
    ``(seed, epoch)`` (a pure function of its arguments, on the CPU)."""
    key = ((seed % 2**64) << 64) | (epoch % 2**64)
    rng = np.random.Generator(np.random.Philox(key=key))
    # offsets are uniform over 0 .. padded - size, like RandomCrop.get_params
    span_y = span_x = 1
    if aug.crop:
        p = aug.crop_padding
        span_y = aug.image[0] + 2 * p - aug.size[0] + 1
        span_x = aug.image[1] + 2 * p - aug.size[1] + 1
    dy = rng.integers(0, span_y, size=n, dtype=np.int64)
    dx = rng.integers(0, span_x, size=n, dtype=np.int64)
    flip = rng.random(n) < aug.flip_p
    return AugParams(torch.from_numpy(dy), torch.from_numpy(dx), torch.from_numpy(flip))


def augment_batch(
    data: MemoryData,
    index: Tensor,
    params: AugParams | None,
    channels_last: bool = False,
) -> Tensor:
    """Normalised float ``[B, C, h, w]`` images of samples ``index`` (on ``data.device``), with
    ``params`` (on the same device; None: no augmentation, e.g. the test split)."""
    aug = data.augment
    x = data.images.index_select(0, index)
    if params is not None and aug.random:
        dy, dx, flip = params.dy[index], params.dx[index], params.flip[index]
        if aug.crop and aug.crop_padding:
            x = F.pad(x, [aug.crop_padding] * 4, value=aug.fill)
        h, w = aug.size
        dev = x.device
        rows = dy[:, None] + torch.arange(h, device=dev)  # [B, h]
        ar_w = torch.arange(w, device=dev)
        cols = torch.where(flip[:, None], dx[:, None] + (w - 1) - ar_w, dx[:, None] + ar_w)
        b = torch.arange(x.shape[0], device=dev)
        # the advanced indices around the channel slice put it last: [B, h, w, C]
        x = x[b[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    # the standard path's ToTensor (x.float() / 255) then Normalize ((x - mean) / std)
    x = x.to(torch.float32).div_(255.0)
    if aug.mean:
        x = x.sub_(data.mean).div_(data.std)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)
