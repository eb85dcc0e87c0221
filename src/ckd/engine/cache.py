"""The teacher-output cache: the frozen teacher's outputs for every (epoch, sample) view of the
fast loader, computed once and read back by every student, method and seed of a suite.

With ``data.loader=fast`` the augmentation of sample ``i`` in epoch ``e`` is a function of
``(aug_seed, e, i)`` (:mod:`ckd.data.fast`), so the teacher's logits of that exact view can be
stored once. Each view keeps its own logits, so batch-level losses (CKD's in-batch negatives)
see exactly the teacher outputs a live teacher would give for the batch.

A cache is a folder::

    .ckd-teacher-cache   the mark of a folder ckd made (written first, before any data)
    manifest.json        what it was made for and how (see :func:`cache_identity`)
    logits.npy           float16 [epochs, N, K]                      (numpy memmap)
    feat0.npy ...        float16 [epochs, N, C_i, H_i, W_i]  optional stage features
    embedding.npy        float16 [epochs, N, D]              optional pooled embedding

The manifest also records the arrays' shapes, checked when the cache is opened, and a sha256
of each array's block of each epoch, computed at build time and checked when the block is
first used, so a cache altered or damaged after it was built is refused (a one-line
ConfigError) instead of training on wrong targets.

The teacher runs in full fp32 for it (no autocast, TF32 off), and its outputs are rounded to
fp16 (relative error <= 2**-11). A cache is refused (a one-line ConfigError) when it was made
for another teacher checkpoint (sha256) or model, another training set (name, size, subset, a
sha256 of its pixels and labels), another augmentation, augmentation generator or seed, or
covers fewer epochs than the run. At the start of every run that uses it, a sample of the
run's own batches is recomputed by the live teacher and compared with the cache (fp16
tolerance); a difference is refused as well.

A cache is built by ``ckd cache build CONFIG [overrides]`` or, for logits only, by the first
run that names it in ``run.teacher_cache``. It is written into a temporary folder and renamed
into place when complete, so an interrupted build leaves nothing that could be read back; the
partial builds of killed processes are removed by the next run or build of that cache.
``ckd cache build --force`` replaces a folder only when ckd marked it as a cache (its
:data:`MARKER`, or the manifest of a cache of an earlier release) and it holds nothing but a
cache's files (:func:`cache_folder_problem`): array files alone (a user's ``logits.npy``) are
never taken for a cache.

Why over 400 lines: one on-disk format is written, verified and read here (manifest, checksums, the
build with the clean-up of partial builds, the reader the trainer and ``ckd cache`` share); split,
each half would have to know the other's layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

import ckd.faults as faults
from ckd.data.fast import GENERATOR, AugParams, MemoryData, augment_batch, draw_augmentation
from ckd.engine.lock import pid_alive
from ckd.errors import ConfigError, show
from ckd.integrity import block_sha256
from ckd.methods.base import Outputs
from ckd.methods.views import run_network
from ckd.paths import output_path
from ckd.schema import flatten

FORMAT = "ckd/teacher-cache/2"  # 2: per-epoch sha256 of every array
FORMAT_FAMILY = "ckd/teacher-cache/"
MANIFEST = "manifest.json"
#: The file that marks a folder as a teacher cache ckd made; written before any data.
MARKER = ".ckd-teacher-cache"
#: Largest magnitude a float16 holds.
FP16_MAX = 65504.0
#: Verification tolerance: ``|cached - live| <= RTOL * |live| + ATOL * max|live|`` per batch.
#: RTOL is twice fp16's unit round-off; ATOL covers fp32 summation-order differences.
RTOL = 2.0**-10
ATOL = 1e-4


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CachedTeacherSection(Protocol):
    """The teacher section a cache identity reads: a model section (a dataclass, recorded
    whole) and the checkpoint its weights come from."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    @property
    def checkpoint(self) -> str | None: ...


class CachedDataSection(Protocol):
    """The data keys a cache identity reads."""

    @property
    def name(self) -> str: ...

    @property
    def train_subset(self) -> int | None: ...

    @property
    def aug_seed(self) -> int | None: ...


@runtime_checkable
class CacheSource(Protocol):
    """What a cache identity reads of a run's config (a classification config is one)."""

    @property
    def teacher(self) -> CachedTeacherSection | None: ...

    @property
    def data(self) -> CachedDataSection: ...


def cache_identity(cfg: CacheSource, train: MemoryData) -> dict[str, Any]:
    """What a cache must have been made for to serve this run (everything but the epochs)."""
    section = cfg.teacher
    if section is None or section.checkpoint is None:
        raise ConfigError("run.teacher_cache: the run has no teacher checkpoint to cache")
    teacher = {k: v for k, v in dataclasses.asdict(section).items() if k != "checkpoint"}
    teacher["checkpoint_sha256"] = file_sha256(section.checkpoint)
    return {
        "teacher": teacher,
        "dataset": {
            "name": cfg.data.name,
            "num_train": len(train),
            "train_subset": cfg.data.train_subset,
            "sha256": train.fingerprint,
        },
        "augmentation": {**train.augment.to_dict(), "generator": GENERATOR},
        "aug_seed": cfg.data.aug_seed,
    }


@contextlib.contextmanager
def full_fp32(device: torch.device) -> Iterator[None]:
    """No autocast, and no TF32 on CUDA: the teacher as exactly as fp32 computes it."""
    saved = None
    if device.type == "cuda":
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        with contextlib.suppress(RuntimeError):
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        if saved is not None:
            with contextlib.suppress(RuntimeError):
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def teacher_forward(teacher: nn.Module, images: torch.Tensor, features: bool) -> Outputs:
    """The frozen teacher's outputs in eval mode, full fp32, under ``inference_mode``."""
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.inference_mode(), full_fp32(images.device):
            return run_network(teacher, images.float(), features)
    finally:
        teacher.train(was_training)


class TeacherCache:
    """An opened cache: :meth:`outputs` gives the teacher's outputs of a batch of views."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        """Open the arrays ``manifest`` lists (memory-mapped) and check their shapes and dtype
        against it. Raises ConfigError (one line) on any disagreement."""
        self.folder, self.manifest = folder, manifest
        shapes = array_shapes(manifest)
        self.arrays = {name: self._open(name, shape) for name, shape in shapes.items()}
        self.checksums: dict[str, list[str]] = manifest["checksums"]["blocks"]
        if set(self.checksums) != set(shapes) or any(
            len(self.checksums[name]) != shape[0] for name, shape in shapes.items()
        ):
            raise ConfigError(f"{self._where}: its manifest lacks the checksums of some arrays")
        self.logits = self.arrays["logits"]
        self.feats = [self.arrays[f"feat{i}"] for i in range(len(shapes) - 2)]
        self.embedding = self.arrays.get("embedding")
        self._verified: set[tuple[str, int]] = set()
        self._slab: tuple[int, str, torch.Tensor] | None = None  # one epoch's logits, on a device

    @property
    def _where(self) -> str:
        return f"run.teacher_cache: {self.folder}"

    def _open(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        path = self.folder / f"{name}.npy"
        try:
            array: np.ndarray = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self._where}: cannot read {path.name}: {e}") from None
        if array.shape != shape or array.dtype != np.float16:
            raise ConfigError(
                f"{self._where}: {path.name} holds {array.dtype} {list(array.shape)} but the "
                f"manifest says float16 {list(shape)}; the cache is corrupt: rebuild it"
            )
        return array

    def verify_epoch(self, epoch: int, names: tuple[str, ...] = ("logits",)) -> None:
        """Check the sha256 of the ``names`` arrays' blocks of ``epoch`` against the manifest
        (once per block: later calls return at once).

        Raises:
            ConfigError: a block differs from what the build wrote.
        """
        for name in names:
            if (name, epoch) in self._verified:
                continue
            if block_sha256(self.arrays[name][epoch]) != self.checksums[name][epoch]:
                raise ConfigError(
                    f"{self._where}: {name} of epoch {epoch + 1} do not match the checksum "
                    "recorded when the cache was built (altered or damaged since); rebuild it "
                    "with `ckd cache build CONFIG --out DIR --force`"
                )
            self._verified.add((name, epoch))

    @property
    def epochs(self) -> int:
        return int(self.manifest["epochs"])

    @property
    def has_features(self) -> bool:
        return self.embedding is not None

    def outputs(
        self,
        epoch: int,
        index: torch.Tensor,
        device: torch.device | str = "cpu",
        features: bool = False,
    ) -> Outputs:
        """The cached outputs of samples ``index`` (CPU ``[B]``, positions in the training set)
        in ``epoch``, as float32 tensors on ``device`` (ordinary tensors, safe for autograd)."""
        if epoch >= self.epochs:
            raise IndexError(
                f"teacher cache {self.folder} covers {self.epochs} epochs; got {epoch}"
            )
        if not features:  # an epoch's logits (10 MB for CIFAR-100) go to the device at once
            return Outputs(self.epoch_logits(epoch, device)[index.to(device, non_blocking=True)])
        idx = index.cpu().numpy()

        def read(array: np.ndarray) -> torch.Tensor:
            rows = torch.from_numpy(np.ascontiguousarray(array[epoch, idx]))
            return rows.to(device, non_blocking=True).float()

        if not self.has_features:
            raise ValueError(f"teacher cache {self.folder} holds logits only, no features")
        assert self.embedding is not None
        self.verify_epoch(epoch, tuple(self.arrays))
        return Outputs(read(self.logits), tuple(read(f) for f in self.feats), read(self.embedding))

    def epoch_logits(self, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """All cached logits of ``epoch`` as float32 ``[N, K]`` on ``device`` (kept until
        another epoch or device is asked for)."""
        key = (epoch, str(device))
        if self._slab is None or self._slab[:2] != key:
            self._slab = None
            self.verify_epoch(epoch)
            rows = torch.from_numpy(np.array(self.logits[epoch]))  # a copy: memmaps are read-only
            if torch.device(device).type == "cuda":
                rows = rows.pin_memory()
            self._slab = (*key, rows.to(device, non_blocking=True).float())
        return self._slab[2]


def open_cache(folder: str | Path, identity: dict[str, Any], epochs: int) -> TeacherCache | None:
    """The cache in ``folder`` if it was made for ``identity`` and covers ``epochs``; None when
    there is none yet (no folder, or an empty one).

    Raises:
        ConfigError: a cache made for something else, an unfinished or unreadable one.
    """
    folder = Path(folder)
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return None
    where = f"run.teacher_cache: {folder}"
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ConfigError(
            f"{where} is not a teacher cache (no {MANIFEST}) and is not empty; name a new "
            "folder for the cache (ckd writes one only into a folder that is absent or empty)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: unreadable {MANIFEST}: {e}") from None
    if not isinstance(manifest, dict):
        raise ConfigError(f"{where}: {MANIFEST} is not a mapping")
    if manifest.get("format") != FORMAT:
        raise ConfigError(
            f"{where}: format {show(manifest.get('format'))}, expected {FORMAT!r} (a cache built "
            "by another ckd version: rebuild it with `ckd cache build ... --force`)"
        )
    have, want = flatten({k: manifest.get(k) for k in identity}), flatten(identity)
    for key in sorted(set(have) | set(want)):
        if have.get(key) != want.get(key):
            raise ConfigError(
                f"{where} was made for {key}={show(have.get(key), 80)} but this run has "
                f"{show(want.get(key), 80)}; refusing it (use another folder, or build one for "
                "this run with `ckd cache build`)"
            )
    try:
        covered = int(manifest["epochs"])
        array_shapes(manifest)
        manifest["checksums"]["blocks"].items()
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{where}: {MANIFEST} is malformed ({type(e).__name__}: {e})") from None
    if covered < epochs:
        raise ConfigError(
            f"{where} covers {covered} epochs but this run needs {epochs}; "
            "build one with enough epochs (`ckd cache build CONFIG optim.epochs=N`)"
        )
    return TeacherCache(folder, manifest)


def array_shapes(manifest: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of every array of a cache, as its manifest describes it."""
    logits = tuple(int(n) for n in manifest["logits"])
    if len(logits) != 3 or logits[0] != int(manifest["epochs"]):
        raise ValueError(f"logits shape {list(logits)} is not [epochs, N, K]")
    shapes: dict[str, tuple[int, ...]] = {"logits": logits}
    feats = manifest.get("features")
    if feats:
        lead = logits[:2]
        for i, shape in enumerate(feats["feats"]):
            shapes[f"feat{i}"] = (*lead, *(int(n) for n in shape))
        shapes["embedding"] = (*lead, int(feats["embedding"]))
    return shapes


#: The files a cache folder holds (a partial build: some of them, without the manifest yet).
CACHE_FILE = re.compile(
    r"\.ckd-teacher-cache|manifest\.json|logits\.npy|embedding\.npy|feat\d+\.npy"
)


def cache_folder_problem(folder: str | Path, marked: bool = True) -> str | None:
    """None when ``folder`` may be replaced by ``ckd cache build --force``: a real folder
    holding only a teacher cache's files, which ckd marked as its own (:data:`MARKER`, or a
    ckd cache manifest of an earlier release). ``marked=False``: a build's own temporary
    folder, whose name is its mark (:data:`BUILDING`). Else what it is, for a one-line
    refusal."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return "is not a folder"
    entries = list(folder.iterdir())
    foreign = [p.name for p in entries if not (CACHE_FILE.fullmatch(p.name) and _plain_file(p))]
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        return f"holds {', '.join(show(n) for n in foreign[:3])}{more}, which no cache holds"
    manifest = folder / MANIFEST
    ours = False
    if manifest.exists():
        try:
            fmt = json.loads(manifest.read_text()).get("format", "")
        except (OSError, ValueError, AttributeError):
            fmt = ""
        if not (isinstance(fmt, str) and fmt.startswith(FORMAT_FAMILY)):
            return f"has a {MANIFEST} that is not a ckd teacher cache's"
        ours = True
    if marked and not ours and not _plain_file(folder / MARKER):
        names = ", ".join(sorted(p.name for p in entries)) or "nothing"
        return (
            f"holds {show(names, 80)} but no mark of a cache ckd made ({MARKER} or its "
            f"{MANIFEST}): those files may be yours"
        )
    return None


def _plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def remove_cache(folder: str | Path) -> None:
    """Delete a cache folder that :func:`cache_folder_problem` accepted: its cache files one
    by one, then the folder (which fails, deleting nothing more, if anything else appeared)."""
    folder = Path(folder)
    for path in folder.iterdir():
        if CACHE_FILE.fullmatch(path.name) and _plain_file(path):
            path.unlink()
    folder.rmdir()


#: A build's temporary folder beside the cache: ``.NAME.building-HOST-PID`` (older releases:
#: ``.NAME.building-PID``), renamed to ``NAME`` when complete.
BUILDING = re.compile(r"\.(?P<name>.+)\.building-(?:(?P<host>.+)-)?(?P<pid>\d+)")


def building_folder(folder: Path) -> Path:
    """This process's temporary folder for building the cache ``folder``."""
    return folder.parent / f".{folder.name}.building-{socket.gethostname()}-{os.getpid()}"


def remove_stale_builds(folder: str | Path) -> list[Path]:
    """Delete the partial builds of cache ``folder`` left by processes of this host that are
    gone (killed mid-build); each only if it holds nothing but a cache's files. Returns them."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        return []
    removed = []
    for entry in folder.parent.iterdir():
        m = BUILDING.fullmatch(entry.name)
        if not m or m["name"] != folder.name or m["host"] not in (None, socket.gethostname()):
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or pid_alive(pid) or cache_folder_problem(entry, False):
            continue
        with contextlib.suppress(OSError):  # another process may be removing it too
            remove_cache(entry)
            removed.append(entry)
    return removed


def cache_bytes(n: int, epochs: int, outputs: Outputs, features: bool) -> int:
    per_view = outputs.logits.shape[1]
    if features:
        per_view += sum(f[0].numel() for f in outputs.feats)
        per_view += outputs.embedding.shape[1] if outputs.embedding is not None else 0
    return 2 * per_view * n * epochs


def build_cache(
    folder: str | Path,
    teacher: nn.Module,
    train: MemoryData,
    identity: dict[str, Any],
    epochs: int,
    batch_size: int = 256,
    channels_last: bool = False,
    features: bool = False,
    echo: Callable[[str], None] = print,
) -> TeacherCache:
    """Run ``teacher`` over every view of ``epochs`` epochs and write the cache to ``folder``
    (which must be absent or empty). Returns it opened."""
    folder = output_path(folder, "run.teacher_cache")
    if folder.exists() and not (folder.is_dir() and not any(folder.iterdir())):
        raise ConfigError(f"run.teacher_cache: {folder} exists and is not empty; name a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    aug, n, device = train.augment, len(train), train.device
    seed = identity["aug_seed"]
    probe = teacher_forward(teacher, _batch(train, torch.arange(min(2, n)), None, False), features)
    need = cache_bytes(n, epochs, probe, features)
    free = shutil.disk_usage(folder.parent).free
    if need > 0.95 * free:
        raise ConfigError(
            f"run.teacher_cache: {folder} needs {need / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB free there"
        )
    tmp = building_folder(folder)
    if tmp.exists() and cache_folder_problem(tmp, False) is None:  # an earlier process of our pid
        remove_cache(tmp)
    tmp.mkdir()
    (tmp / MARKER).write_text(
        "a teacher cache written by ckd; `ckd cache build --force` may replace it\n"
    )
    start = time.perf_counter()
    checksums: dict[str, list[str]] = {}  # array -> sha256 of each epoch's block
    try:
        shapes: dict[str, Any] = {"logits": [epochs, n, int(probe.logits.shape[1])]}
        arrays = {"logits": _open_array(tmp / "logits.npy", shapes["logits"])}
        if features:
            assert probe.embedding is not None  # run_network gives it with the features
            shapes["features"] = {
                "feats": [list(f.shape[1:]) for f in probe.feats],
                "embedding": int(probe.embedding.shape[1]),
            }
            for i, f in enumerate(probe.feats):
                arrays[f"feat{i}"] = _open_array(tmp / f"feat{i}.npy", [epochs, n, *f.shape[1:]])
            arrays["embedding"] = _open_array(
                tmp / "embedding.npy", [epochs, n, int(probe.embedding.shape[1])]
            )
        for epoch in range(epochs):
            params = draw_augmentation(aug, n, seed, epoch).to(device) if aug.random else None
            for lo in range(0, n, batch_size):
                index = torch.arange(lo, min(n, lo + batch_size), device=device)
                out = teacher_forward(
                    teacher, _batch(train, index, params, channels_last), features
                )
                parts = {"logits": out.logits}
                if features:
                    assert out.embedding is not None  # run_network gives it with the features
                    parts.update({f"feat{i}": f for i, f in enumerate(out.feats)})
                    parts["embedding"] = out.embedding
                for name, value in parts.items():
                    arrays[name][epoch, lo : lo + len(index)] = _to_fp16(value, name, epoch)
            for name, array in arrays.items():
                checksums.setdefault(name, []).append(block_sha256(array[epoch]))
            echo(f"teacher cache: epoch {epoch + 1}/{epochs} ({time.perf_counter() - start:.0f} s)")
            faults.point("inside:cache-build")
        for array in arrays.values():
            array.flush()
        del arrays
        manifest = {
            "format": FORMAT,
            **identity,
            "epochs": epochs,
            "num_classes": int(probe.logits.shape[1]),
            **shapes,
            "features": shapes.get("features"),
            "dtype": "float16",
            "checksums": {"algorithm": "sha256 of each epoch's block", "blocks": checksums},
            "precision": "teacher in eval mode, fp32 without autocast or TF32, stored as fp16",
            "built": {
                "device": _device_name(device),
                "torch": torch.__version__,
                "seconds": round(time.perf_counter() - start, 1),
                "batch_size": batch_size,
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        with contextlib.suppress(OSError):
            folder.rmdir()  # an empty folder given for it (checked above)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    cache = open_cache(folder, identity, epochs)
    if cache is None:  # the folder was emptied or removed by someone else meanwhile
        raise ConfigError(
            f"run.teacher_cache: {folder} was changed while it was built; build again"
        )
    return cache


def _open_array(path: Path, shape: list[int]) -> np.memmap[Any, Any]:
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=tuple(shape))


def _to_fp16(value: torch.Tensor, name: str, epoch: int) -> np.ndarray:
    v = value.detach().float()
    if not torch.isfinite(v).all() or v.abs().max().item() > FP16_MAX:
        raise FloatingPointError(
            f"teacher cache: {name} of epoch {epoch + 1} is not finite or beyond fp16's range"
        )
    return v.half().cpu().numpy()


def _batch(
    data: MemoryData, index: torch.Tensor, params: AugParams | None, channels_last: bool
) -> torch.Tensor:
    return augment_batch(data, index.to(data.device), params, channels_last)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def verify_cache(
    cache: TeacherCache,
    teacher: nn.Module,
    batches: list[tuple[int, torch.Tensor, torch.Tensor]],
    features: bool = False,
) -> float:
    """Recompute ``batches`` (``(epoch, images, index)``: the run's own views) with the live
    teacher and compare with the cache. Returns the largest error relative to the tolerance
    (<= 1 passes).

    Raises:
        ConfigError: a cached output differs from the live teacher's beyond fp16 tolerance.
    """
    worst = 0.0
    use_feats = features and cache.has_features
    for epoch, images, index in batches:
        live = teacher_forward(teacher, images, use_feats)
        cached = cache.outputs(epoch, index, images.device, features=use_feats)
        pairs = [("logits", live.logits, cached.logits)]
        if use_feats:
            pairs += [
                (f"feat{i}", a, b)
                for i, (a, b) in enumerate(zip(live.feats, cached.feats, strict=True))
            ]
            assert live.embedding is not None and cached.embedding is not None  # as features
            pairs.append(("embedding", live.embedding, cached.embedding))
        for name, a, b in pairs:
            a = a.float()
            bound = RTOL * a.abs() + ATOL * max(1.0, a.abs().max().item())
            ratio = ((b - a).abs() / bound).max().item()
            worst = max(worst, ratio)
            if not ratio <= 1.0:
                err = (b - a).abs().max().item()
                raise ConfigError(
                    f"run.teacher_cache: {cache.folder}: cached {name} of epoch {epoch + 1} "
                    f"differ from the live teacher's by up to {err:.3g} (beyond fp16 "
                    "tolerance); the cache is stale or corrupt: rebuild it"
                )
    return worst


def describe(folder: str | Path) -> str:
    """One line on the cache in ``folder`` (``ckd cache info``)."""
    manifest = Path(folder) / MANIFEST
    if not manifest.is_file():
        raise ConfigError(f"{folder} is not a teacher cache (no {MANIFEST})")
    try:
        m = json.loads(manifest.read_text())
        feats = "with features" if m.get("features") else "logits only"
        return (
            f"{folder}: teacher {m['teacher']['name']} "
            f"(sha256 {m['teacher']['checkpoint_sha256'][:12]}), {m['dataset']['name']} "
            f"{m['dataset']['num_train']} train views x {m['epochs']} epochs, "
            f"aug_seed {m['aug_seed']}, {feats}, built on {m['built']['device']} "
            f"in {m['built']['seconds']} s"
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{manifest}: unreadable or malformed ({e!r:.120})") from None
