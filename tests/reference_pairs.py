"""What the reference fixtures and the tests that read them share: the fixed batch, the pairs
and methods, the names by which this project's method modules are known to the reference code,
and the summaries that pin a feature map or a gradient.

Everything here is a fact about the setup (names, sizes, seeds), not reference code. Values are
drawn with ``torch.rand`` / ``torch.randint`` from seeded generators (mt19937 plus a linear map),
so they are the same on every CPU; weights come from :func:`zoo_fill.fill_state`, each tensor
from its key name alone, so the reference model and this project's (same key names, loaded with
``strict=True``) receive identical values.
"""

from __future__ import annotations

import contextlib
import zlib
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference"
NUM_CLASSES = 100
BATCH = 8
REFERENCE_EPOCH = 5  # 1-based, as the reference passes it; this project's epoch 4 (0-based)
CALIBRATION = 64  # images whose batch statistics become the teacher's BN running statistics
CRD_NUM_DATA, CRD_K = 128, 64  # memory-bank rows and negatives per sample (small, same code path)

# (teacher, student). The first three run in the default suite: homogeneous, WRN, heterogeneous.
PAIRS = {
    "resnet32x4_resnet8x4": ("resnet32x4", "resnet8x4"),
    "wrn_40_2_wrn_16_2": ("wrn_40_2", "wrn_16_2"),
    "resnet32x4_ShuffleV1": ("resnet32x4", "ShuffleV1"),
    "vgg13_vgg8": ("vgg13", "vgg8"),
    "vgg13_MobileNetV2": ("vgg13", "MobileNetV2"),
    "ResNet50_MobileNetV2": ("ResNet50", "MobileNetV2"),
    "wrn_40_2_ShuffleV1": ("wrn_40_2", "ShuffleV1"),
}
FAST_PAIRS = ("resnet32x4_resnet8x4", "wrn_40_2_wrn_16_2", "resnet32x4_ShuffleV1")

# this project's method name -> the reference's distiller_dict key
METHODS = {
    "ckd": "CKD",
    "kd": "KD",
    "dkd": "DKD",
    "fitnet": "FITNET",
    "at": "AT",
    "nst": "NST",
    "pkt": "PKT",
    "kdsvd": "KDSVD",
    "sp": "SP",
    "rkd": "RKD",
    "ofd": "OFD",
    "vid": "VID",
    "crd": "CRD",
    "reviewkd": "REVIEWKD",
}
# The options given to this project's methods: their defaults (the reference's cfg.py values),
# except CRD's bank size and negatives, set small on both sides (crd.feat_dim 128 on both too).
OPTIONS: dict[str, dict] = {"crd": {"nce_k": CRD_K}}

# The zoo: every model of the reference's cifar_model_dict (its "_T" entries repeat three WRNs).
ZOO = (
    *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
    "resnet8x4",
    "resnet32x4",
    *(f"wrn_{d}_{k}" for d, k in ((16, 1), (16, 2), (16, 4), (28, 2), (28, 4), (40, 1), (40, 2))),
    *(f"vgg{d}" for d in (8, 11, 13, 16, 19)),
    "MobileNetV2",
    "ShuffleV1",
    "ShuffleV2",
    "ResNet18",
    "ResNet50",
)


def uniform(shape: tuple[int, ...], seed: int, low: float = -1.0, high: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float32) * (high - low) + low


def images(n: int, seed: int) -> torch.Tensor:
    """``[n, 3, 32, 32]``: smooth random colour blobs plus pixel noise, roughly unit scale."""
    coarse = uniform((n, 3, 4, 4), seed, -1.5, 1.5)
    smooth = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear")
    return smooth + uniform((n, 3, 32, 32), seed + 1, -0.5, 0.5)


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed batch: images ``[8, 3, 32, 32]``, labels ``[8]``, dataset indices ``[8]``."""
    g = torch.Generator().manual_seed(11)
    labels = torch.randint(NUM_CLASSES, (BATCH,), generator=g)
    index = torch.randperm(CRD_NUM_DATA, generator=g)[:BATCH]
    return images(BATCH, 10), labels, index


def crd_rows(index: torch.Tensor) -> torch.Tensor:
    """``[B, 1 + K]`` bank rows for CRD: each sample's own index, then K others (seeded)."""
    g = torch.Generator().manual_seed(12)
    draws = torch.randint(CRD_NUM_DATA - 1, (len(index), CRD_K), generator=g)
    draws = draws + (draws >= index.unsqueeze(1)).long()
    return torch.cat([index.unsqueeze(1), draws], dim=1)


def key_seed(key: str) -> int:
    return zlib.crc32(key.encode())


def probe(shape: tuple[int, ...], key: str) -> torch.Tensor:
    """A fixed random direction of ``shape``, unit norm, from ``key`` alone."""
    r = uniform(tuple(shape), key_seed(key)).double()
    return r / r.norm()


def grad_summary(named: list[tuple[str, torch.Tensor | None]]) -> torch.Tensor:
    """``[P, 2]`` float64: per parameter tensor, its gradient's norm and its projection on
    :func:`probe` of the parameter's name (0, 0 for no gradient)."""
    rows = []
    for key, g in named:
        if g is None:
            rows.append((0.0, 0.0))
        else:
            g = g.detach().double()
            rows.append((g.norm().item(), (g * probe(tuple(g.shape), key)).sum().item()))
    return torch.tensor(rows, dtype=torch.float64)


def key_codes(keys: list[str]) -> torch.Tensor:
    """The CRC32 of each name, int64: what a fixture's rows belong to."""
    return torch.tensor([key_seed(k) for k in keys], dtype=torch.int64)


def map_summary(x: torch.Tensor, key: str) -> torch.Tensor:
    """Float64 ``[B, C + 4]`` of a ``[B, C, H, W]`` map (or ``[B, C]``): per sample the channel
    means, then its projections on four fixed unit directions of the sample's shape."""
    x = x.detach().double()
    means = x.flatten(2).mean(2) if x.dim() == 4 else x
    shape = tuple(x.shape[1:])
    dirs = torch.stack([probe(shape, f"{key}/{i}").flatten() for i in range(4)])  # [4, N]
    return torch.cat([means, x.flatten(1) @ dirs.t()], dim=1)


def close_summary(got: torch.Tensor, want: torch.Tensor, rtol: float) -> bool:
    """Within ``rtol`` of the scale of the row (per sample: its largest entry, at least 1e-3),
    so float32 rounding in a deep stack passes and a different map does not."""
    scale = want.abs().amax(dim=1, keepdim=True).clamp_min(1e-3)
    return bool(((got - want).abs() <= rtol * scale).all())


# ----------------------------------------------------------------------------- module names
def reference_module_key(method: str, key: str, levels: int) -> str:
    """The reference distiller's state-dict key (or ``log_scales.<k>``, which it keeps in a plain
    list) of this project's method-module key ``key``; ``levels``: the number of ReviewKD ABFs,
    which the reference holds deepest first."""
    if method == "fitnet":
        return key.replace("regressor.", "conv_reg.", 1)
    if method == "ofd":
        return "connectors." + key
    if method == "vid":
        return key
    if method == "crd":
        for ours, theirs in (
            ("embed_student.", "embed_s.linear."),
            ("embed_teacher.", "embed_t.linear."),
            ("memory_student", "contrast.memory_v1"),
            ("memory_teacher", "contrast.memory_v2"),
        ):
            if key.startswith(ours):
                return theirs + key[len(ours) :]
    if method == "reviewkd":
        _, k, rest = key.split(".", 2)
        return f"abfs.{levels - 1 - int(k)}.{rest}"
    raise KeyError(f"{method}: no reference name for {key}")


def unfilled(key: str) -> bool:
    """Method buffers that keep their initial value: CRD's normalising constants (unset, -1)."""
    return key == "normalisers"


def fixture_path(name: str) -> Path:
    return FIXTURES / f"{name}.pt"


# ----------------------------------------------------------------------------- trajectory
# A short run of this project's trainer against the reference trainer's on the same batches:
# resnet14 -> resnet8 on 64 generated CIFAR-10 images, batch 8, 3 epochs (24 steps, two epoch
# boundaries), SGD momentum 0.9, weight decay 5e-4 on every trainable tensor (as the reference
# decays), the learning rate updated once per epoch (cosine: 0.05, 0.0375, 0.0125; step: x0.1
# from the third epoch), and warm-ups of 2 epochs (DKD, ReviewKD: 1/2, then 1). Both run in
# float64 (torch's default dtype set to it; the losses keep float64): in float32, 24 steps of
# batch-8 BN networks from a random start turn rounding differences into weight differences of
# up to 1e-2 of the distance moved (ReLUs flipping on last-bit differences, then amplified),
# the same between two float32 runs of the reference itself; in float64 they stay below 1e-9.
TRAJECTORY_METHODS = {  # method -> (its options, schedule)
    "ckd": ({"name": "ckd", "w_ckd": 10.0, "temperature": 1.0}, "cosine"),
    "kd": ({"name": "kd"}, "step"),
    "dkd": ({"name": "dkd", "warmup_epochs": 2}, "step"),
    "reviewkd": ({"name": "reviewkd", "warmup_epochs": 2}, "cosine"),
}
TRAJECTORY = {
    "classes": 10,
    "train": 64,
    "test": 16,
    "batch": 8,
    "epochs": 3,
    "lr": 0.05,
    "milestones": [2],
    "teacher": "resnet14",
    "student": "resnet8",
}


def trajectory_config(method: str, root: Path, out_dir: Path, student: Path, teacher: Path):
    """The run's config mapping (for ``ckd.config.config_from_dict``); ``student`` and
    ``teacher`` are the checkpoint files of the starting weights."""
    options, schedule = TRAJECTORY_METHODS[method]
    t = TRAJECTORY
    return {
        "data": {
            "name": "cifar10",
            "root": str(root),
            "batch_size": t["batch"],
            "test_batch_size": t["test"],
            "num_workers": 0,
            "augment": False,
            "verify": False,  # generated stand-in data: no published md5
        },
        "student": {"name": t["student"], "checkpoint": str(student)},
        "teacher": {"name": t["teacher"], "checkpoint": str(teacher)},
        "method": options,
        "optim": {
            "epochs": t["epochs"],
            "lr": t["lr"],
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": schedule,
            "milestones": t["milestones"],
            "gamma": 0.1,
            "lr_update": "epoch",
        },
        "run": {
            "seed": 0,
            "device": "cpu",
            "amp": "none",
            "out_dir": str(out_dir),
            "tensorboard": False,
            "progress": False,
        },
    }


def data_checksum(root: Path) -> torch.Tensor:
    """Sums of the generated CIFAR-10 files' bytes (int64), to tell a changed generator from a
    changed trainer."""
    folder = root / "cifar-10-batches-py"
    files = sorted(p for p in folder.iterdir() if p.name.startswith(("data_batch", "test_batch")))
    return torch.tensor(
        [sum((i + 1) * b for i, b in enumerate(p.read_bytes())) for p in files], dtype=torch.int64
    )


@contextlib.contextmanager
def float64_default():
    """torch's default dtype float64 (new modules and ``ToTensor`` images) inside the block."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)
