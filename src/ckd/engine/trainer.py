"""The trainer: one loop for every method, teacher training included.

It sums the loss terms a method returns; it never knows which method runs. Each epoch's
randomness (shuffle order, augmentation, worker seeds) is derived from ``(seed, epoch)`` alone,
and checkpoints hold the model, optimizer, grad scaler, epoch, best accuracy and RNG states, so a
run that is stopped and resumed ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ckd.config import Config
from ckd.engine.build import (
    amp_dtype,
    build_data,
    build_distiller,
    fast_data,
    fast_test_loader,
    fast_train_loader,
    pick_device,
    test_loader,
    train_loader,
)
from ckd.engine.cache import (
    TeacherCache,
    aug_seed_of,
    build_cache,
    cache_identity,
    open_cache,
    verify_cache,
)
from ckd.engine.checkpoint import (
    FORMAT,
    load_checkpoint,
    rng_state,
    save_atomic,
    seed_everything,
    set_rng_state,
)
from ckd.engine.distributed import check_split, init_distributed, main_only
from ckd.engine.evaluate import evaluate
from ckd.engine.metrics import MetricsLog
from ckd.engine.schedule import learning_rate, lr_scale
from ckd.errors import ConfigError, RunDirError
from ckd.methods.base import Distiller, Outputs, TeacherSource
from ckd.schema import flatten

# Keys that may differ between the run being resumed and the config given to resume it.
# (The number of processes is not part of the config: a run may resume with another one.)
_RESUME_FREE = {
    "run.progress",
    "run.tensorboard",
    "run.out_dir",
    "source",
    "data.num_workers",
    "data.test_batch_size",
    "optim.accum_steps",
    "run.dist_backend",
}


_say = functools.partial(print, flush=True)


def _group(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (a last shorter one is dropped: it cannot occur with
    the loaders here, which cut every batch into the same number of micro-batches)."""
    group: list[Any] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []


# Settings added after runs were started without them, with their defaults: a checkpoint whose
# config lacks one is taken to have the default (so such runs can still be resumed).
_ADDED_SETTINGS = {
    "data.loader": "standard",
    "data.aug_seed": None,
    "run.channels_last": "auto",
    "run.compile": False,
    "run.teacher_cache": None,
    "optim.accum_steps": 1,
    "optim.lr_reference_batch": None,
    "optim.lr_update": "step",
    "run.dist_backend": "auto",
    "run.sync_bn": False,
    "student.pretrained": False,
    "teacher.pretrained": False,
}
#: Batches of the run's own first epoch that are recomputed to verify a teacher cache.
CACHE_VERIFY_BATCHES = 2


def channels_last_enabled(setting: bool | str, device: torch.device) -> bool:
    """``run.channels_last``: ``auto`` is on for CUDA and the CPU (oneDNN), where it is faster
    (benchmarks/README.md), and off elsewhere."""
    if setting == "auto":
        return device.type in ("cuda", "cpu")
    return bool(setting)


def live_teacher(distiller: Distiller, images: torch.Tensor) -> Outputs:
    """The teacher's outputs computed under ``inference_mode`` (under the caller's autocast),
    returned as ordinary tensors so that losses may save them for backward."""
    with torch.inference_mode():
        out = distiller.teacher_outputs(images)

    def ordinary(v: Any) -> Any:  # a clone made outside inference mode is an ordinary tensor
        if isinstance(v, torch.Tensor):
            return v.clone()
        return tuple(ordinary(x) for x in v) if isinstance(v, tuple) else v

    return Outputs(**{f.name: ordinary(getattr(out, f.name)) for f in dataclasses.fields(out)})


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of every random draw of one epoch."""
    return (seed * 1_000_003 + epoch) % 2**63


def config_difference(started: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The first setting (beyond logging/paths) in which config ``now`` differs from the config
    a run was ``started`` with, as a sentence; None when they describe the same run."""
    old, new = flatten(started), flatten(now)
    for key in sorted(set(old) | set(new)):
        if key not in _RESUME_FREE and old.get(key) != new.get(key):
            return f"{key} is {new.get(key)!r} but the run was started with {old.get(key)!r}"
    return None


def check_run_dir(out_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (``--resume``), or None for a fresh run; a RunDirError when
    resuming without a checkpoint or when a fresh run would overwrite one."""
    last = out_dir / "last.pt"
    if resume:
        if not last.is_file():
            raise RunDirError(f"--resume: no checkpoint {last} to resume from")
        return last
    if last.exists() or (out_dir / "result.json").exists():
        raise RunDirError(
            f"{out_dir} already holds a run; pass --resume to continue it or set "
            "run.out_dir to a new folder (nothing was overwritten)"
        )
    return None


class TrainView(nn.Module):
    """What DDP wraps: the student and the methods' modules (never the teacher, which the
    distiller keeps outside this module's parameters); forward = ``Distiller.forward_train``."""

    def __init__(self, distiller: Distiller) -> None:
        super().__init__()
        self.student = distiller.student
        self.methods = distiller.methods
        object.__setattr__(self, "_distiller", distiller)  # not a submodule

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._distiller.forward_train(*args, **kwargs)


class Trainer:
    """Builds everything from ``cfg`` up front (so a bad input fails before any file is written),
    then :meth:`fit` trains, evaluates every epoch and checkpoints.

    Files in ``out_dir``: ``config.yaml``, ``metrics.jsonl``, ``tensorboard/``, ``last.pt``,
    ``best.pt`` and, once finished, ``result.json``.

    Under ``torchrun`` every process builds the same trainer; the student and the methods'
    modules are wrapped in ``DistributedDataParallel`` (the teacher never is), each process
    trains on its share of every global batch (:mod:`ckd.engine.distributed`), metrics are
    summed over the processes and only rank 0 prints and writes files.
    """

    def __init__(
        self,
        cfg: Config,
        resume: bool = False,
        echo: Callable[[str], None] = _say,
    ) -> None:
        self.cfg = cfg
        self.dist, device = init_distributed(cfg.run.dist_backend, cfg.run.device)
        self.echo = main_only(self.dist, echo)
        check_split(cfg.data.batch_size, self.dist, cfg.optim.accum_steps)
        self.out_dir = Path(cfg.run.out_dir) if cfg.run.out_dir else cfg.default_out_dir()
        self.resume_from = self._check_run_dir(resume)
        self.device = pick_device(device)
        self.amp = amp_dtype(cfg.run.amp, self.device)
        self.channels_last = channels_last_enabled(cfg.run.channels_last, self.device)
        seed_everything(cfg.run.seed)
        self.data = build_data(cfg.data, seed=cfg.run.seed)
        self.fast = (
            fast_data(self.data, cfg.data, self.device) if cfg.data.loader == "fast" else None
        )
        if self.fast is not None:
            self.test_loader = fast_test_loader(
                self.fast.test, cfg.data, self.channels_last, self.dist
            )
        else:
            self.test_loader = test_loader(self.data, cfg.data, self.device, self.dist)
        self.distiller = build_distiller(cfg, self.data.info, len(self.data.train))
        if cfg.run.sync_bn and self.dist.distributed:
            if self.device.type != "cuda":
                raise ConfigError(
                    f"run.sync_bn=true needs CUDA devices (SyncBatchNorm does not run on "
                    f"{self.device.type}); set run.sync_bn=false"
                )
            self.distiller.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.distiller.student)
        self.distiller.to(self.device)
        if self.channels_last:
            self.distiller.to(memory_format=torch.channels_last)
        o = cfg.optim
        self.optimizer = torch.optim.SGD(
            self.distiller.trainable_parameters(),
            lr=o.lr,
            momentum=o.momentum,
            nesterov=o.nesterov,
            weight_decay=o.weight_decay,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp is torch.float16)
        self.start_epoch = 0
        self.best_top1 = -1.0
        self.best_epoch = -1
        if self.resume_from is not None:
            self._restore(load_checkpoint(self.resume_from))
        self.teacher_cache: TeacherCache | None = None
        if cfg.run.teacher_cache is not None:
            self.teacher_cache = self._open_teacher_cache(cfg.run.teacher_cache)
        if cfg.run.compile is True:
            self.distiller.student.compile()
        if cfg.run.compile is not False and self.teacher_cache is None:
            if self.distiller.teacher is not None:  # frozen: weights become constants
                self.distiller.teacher.compile(options={"freezing": True})
        self.ddp: DDP | None = None
        if self.dist.distributed:  # broadcasts rank 0's weights (and buffers) to every rank
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(TrainView(self.distiller), device_ids=ids)
        self.lr_scale = lr_scale(cfg.optim, cfg.data.batch_size)

    # ------------------------------------------------------------------ set-up
    def _check_run_dir(self, resume: bool) -> Path | None:
        return check_run_dir(self.out_dir, resume)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("format") != FORMAT:
            raise RunDirError(f"{self.resume_from}: not a ckd training checkpoint")
        started = ckpt["config"]
        for key, value in _ADDED_SETTINGS.items():  # runs started before these settings
            section, name = key.split(".")
            if isinstance(started.get(section), dict) and name not in started[section]:
                started = {**started, section: {**started[section], name: value}}
        differs = config_difference(started, self.cfg.to_dict())
        if differs:
            raise ConfigError(f"--resume: {differs}")
        self.distiller.student.load_state_dict(ckpt["model"])
        self.distiller.load_trainable_state_dict(
            {**{f"student.{k}": v for k, v in ckpt["model"].items()}, **ckpt["method"]}
        )
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = ckpt["epoch"]
        self.best_top1, self.best_epoch = ckpt["best_top1"], ckpt["best_epoch"]
        set_rng_state(ckpt["rng"])

    def _open_teacher_cache(self, folder: str) -> TeacherCache | None:
        """Open (or, when there is none yet, build) the teacher cache and verify it on the run's
        own first batches; None when a method reads features the cache does not hold."""
        cfg, d = self.cfg, self.distiller
        assert self.fast is not None and d.teacher is not None  # validated with the config
        identity = cache_identity(cfg, self.fast.train)
        if not self.dist.is_main:  # rank 0 opens (or builds) it first
            self.dist.barrier()
        cache = open_cache(folder, identity, cfg.optim.epochs)
        if cache is None:
            self.echo(
                f"teacher cache {folder}: none yet; building it ({cfg.optim.epochs} epochs x "
                f"{len(self.fast.train)} views, logits)"
            )
            cache = build_cache(
                folder,
                d.teacher,
                self.fast.train,
                identity,
                cfg.optim.epochs,
                batch_size=max(cfg.data.batch_size, cfg.data.test_batch_size),
                channels_last=self.channels_last,
                echo=self.echo,
            )
        if self.dist.is_main:
            self.dist.barrier()
        if d.needs_features and not cache.has_features:
            self.echo(
                f"teacher cache {folder} holds logits only and a method here reads teacher "
                "features: running the live teacher instead (`ckd cache build --features`)"
            )
            return None
        if getattr(d, "needs_preact", False):
            self.echo(
                f"teacher cache {folder} holds no pre-activation maps, which a method here "
                "reads: running the live teacher instead"
            )
            return None
        epoch = min(self.start_epoch, cfg.optim.epochs - 1)
        loader = self._fast_loader(epoch)
        sample = []
        for images, _, index in loader:  # this rank's micro-batches
            sample.append((epoch, images, index))
            if len(sample) >= CACHE_VERIFY_BATCHES:
                break
        verify_cache(cache, d.teacher, sample, features=d.needs_features)
        return cache

    # ------------------------------------------------------------------ training
    def _progress(self, iterable, **kw):
        enabled = self.cfg.run.progress and sys.stderr.isatty() and self.dist.is_main
        return tqdm(iterable, disable=not enabled, leave=False, dynamic_ncols=True, **kw)

    def _fast_loader(self, epoch: int):
        assert self.fast is not None
        generator = torch.Generator().manual_seed(epoch_seed(self.cfg.run.seed, epoch))
        return fast_train_loader(
            self.fast.train,
            self.cfg.data,
            generator,
            aug_seed_of(self.cfg),
            epoch,
            self.channels_last,
            self.dist,
            self.cfg.optim.accum_steps,
        )

    def _teacher_source(self, epoch: int, images: torch.Tensor, index: torch.Tensor):
        """Fast path: the teacher's outputs of a batch from the cache, else from the live
        teacher under inference mode (lazily: only when a method asks for them)."""
        d = self.distiller
        if d.teacher is None:
            return None
        if self.teacher_cache is not None:
            return functools.partial(
                self.teacher_cache.outputs, epoch, index, self.device, d.needs_features
            )
        return functools.partial(live_teacher, d, images)

    def epoch_batches(
        self, epoch: int
    ) -> tuple[int, Iterator[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, TeacherSource]]]]:
        """Seed the epoch's randomness from ``(seed, epoch)`` (and the rank) and return its number
        of optimisation steps and the steps, each a list of this rank's ``optim.accum_steps``
        micro-batches ``(images, targets, index, teacher source)`` on the device."""
        seed_everything(epoch_seed(self.cfg.run.seed, epoch) + 7919 * self.dist.rank)
        accum = self.cfg.optim.accum_steps
        if self.fast is not None:
            fast = self._fast_loader(epoch)
            micro = ((x, y, i, self._teacher_source(epoch, x, i)) for x, y, i in fast)
            return fast.steps(), _group(micro, accum)
        generator = torch.Generator().manual_seed(epoch_seed(self.cfg.run.seed, epoch))
        loader = train_loader(self.data, self.cfg.data, self.device, generator, self.dist, accum)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format

        def standard():
            for images, targets, index in loader:
                images = images.to(self.device, non_blocking=True).contiguous(memory_format=fmt)
                yield images, targets.to(self.device, non_blocking=True), index, None

        return len(loader) // accum, _group(standard(), accum)

    def train_step(
        self,
        micro_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, TeacherSource]],
        epoch: int,
        step: int,
        lr: float,
    ) -> list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
        """One optimisation step over this rank's micro-batches (gradients accumulated, DDP's
        all-reduce only after the last); returns (loss, student logits, loss terms) of each,
        detached."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        forward = self.ddp if self.ddp is not None else self.distiller.forward_train
        gather = self.dist.gather if self.dist.distributed else None
        n = len(micro_batches)
        done = []
        for k, (images, targets, index, teacher) in enumerate(micro_batches):
            later = self.ddp is not None and k < n - 1
            with self.ddp.no_sync() if later else nullcontext():  # type: ignore[union-attr]
                with torch.autocast(
                    self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
                ):
                    logits, terms = forward(
                        images,
                        targets,
                        teacher=teacher,
                        epoch=epoch,
                        step=step,
                        index=index,
                        gather=gather,
                    )
                loss = torch.stack([t.float() for t in terms.values()]).sum()
                self.scaler.scale(loss / n if n > 1 else loss).backward()
            done.append((loss.detach(), logits.detach(), {k: v.detach() for k, v in terms.items()}))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return done

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training set; returns the epoch's mean loss terms and accuracy
        (over all processes)."""
        steps, batches = self.epoch_batches(epoch)
        self.distiller.train()
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=self.device)
        seen = 0
        start = time.perf_counter()
        bar = self._progress(
            batches, total=steps, desc=f"epoch {epoch + 1}/{self.cfg.optim.epochs}"
        )
        for i, micro_batches in enumerate(bar):
            lr = learning_rate(self.cfg.optim, epoch, i, steps, self.lr_scale)
            done = self.train_step(micro_batches, epoch, epoch * steps + i, lr)
            for (_, targets, *_), (_, logits, terms) in zip(micro_batches, done, strict=True):
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value.float() * targets.numel()
                correct += (logits.argmax(1) == targets).sum()
                seen += targets.numel()
            if i % 20 == 0:
                bar.set_postfix(loss=f"{done[-1][0].item():.3f}", lr=f"{lr:.4g}")
        self.dist.broadcast_buffers(self.distiller.student)
        self.dist.broadcast_buffers(self.distiller.methods)
        names = list(sums)
        seen_t = torch.tensor(float(seen), device=self.device)
        totals = torch.stack([*(sums[k] for k in names), correct.float(), seen_t])
        totals = self.dist.all_reduce_sum(totals).tolist()
        elapsed = time.perf_counter() - start
        n = totals[-1]
        row = {f"train_{k}": v / n for k, v in zip(names, totals, strict=False)}
        row["train_loss"] = sum(row.values())
        row["train_top1"] = 100.0 * totals[-2] / n
        row["lr"] = lr
        row["train_time_s"] = elapsed
        row["images_per_s"] = n / elapsed
        if not all(math.isfinite(v) for v in row.values()):
            raise FloatingPointError(
                f"non-finite loss in epoch {epoch + 1}: {row}; last checkpoint kept as it was"
            )
        return row

    def _checkpoint(self, epoch: int) -> dict[str, Any]:
        state = self.distiller.trainable_state_dict()
        return {
            "format": FORMAT,
            "model": {
                k[len("student.") :]: v for k, v in state.items() if k.startswith("student.")
            },
            "method": {k: v for k, v in state.items() if not k.startswith("student.")},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "config": self.cfg.to_dict(),
            "rng": rng_state(),
        }

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        return evaluate(
            model,
            self.test_loader,
            self.device,
            self.amp,
            reduce=self.dist.all_reduce_sum if self.dist.distributed else None,
        )

    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``optim.epochs`` (or stop after epoch ``stop_after``, to continue later with
        ``resume``). Returns the result (also written to ``result.json`` when finished)."""
        cfg = self.cfg
        main = self.dist.is_main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if main and self.resume_from is None:
            (self.out_dir / "config.yaml").write_text(
                yaml.safe_dump(cfg.to_dict(), sort_keys=False)
            )
        d = self.distiller
        teacher_top1 = None
        methods = " + ".join(m.name for m in cfg.method.parts())
        self.echo(
            f"run {self.out_dir}: {methods}, student {cfg.student.name} "
            f"({sum(p.numel() for p in d.student.parameters()):,} parameters"
            f"{f', +{d.extra_parameters():,} in the method' if d.extra_parameters() else ''}), "
            f"{cfg.data.name} {len(self.data.train)} train / {len(self.data.test)} test, "
            f"device {self.device}"
        )
        self.echo(
            f"input {cfg.data.loader}, "
            f"{str(self.amp).replace('torch.', '') if self.amp else 'fp32'}, "
            f"{'channels_last' if self.channels_last else 'contiguous'}"
            + {True: ", compiled", "teacher": ", teacher compiled"}.get(cfg.run.compile, "")
            + (f", teacher cache {cfg.run.teacher_cache}" if self.teacher_cache else "")
            + (
                f", DDP {torch.distributed.get_backend()} x {self.dist.world_size} process(es)"
                if self.ddp is not None
                else ""
            )
            + (
                f", {cfg.optim.accum_steps} micro-batches per step"
                if cfg.optim.accum_steps > 1
                else ""
            )
        )
        if d.teacher is not None:
            teacher = self.evaluate(d.teacher)
            teacher_top1 = teacher["top1"]
            self.echo(
                f"teacher {cfg.teacher.name}: top-1 {teacher['top1']:.2f}  "
                f"top-5 {teacher['top5']:.2f}"
            )
        log = MetricsLog(
            self.out_dir,
            cfg.run.tensorboard,
            resume_epoch=self.start_epoch if self.resume_from else None,
            enabled=main,
        )
        wall = time.perf_counter()
        last = None
        try:
            for epoch in range(self.start_epoch, cfg.optim.epochs):
                row = self.train_one_epoch(epoch)
                test = self.evaluate(d)
                last = {"epoch": epoch + 1, **row, **{f"test_{k}": v for k, v in test.items()}}
                is_best = test["top1"] > self.best_top1
                if is_best:
                    self.best_top1, self.best_epoch = test["top1"], epoch + 1
                if main:
                    ckpt = self._checkpoint(epoch + 1)
                    save_atomic(ckpt, self.out_dir / "last.pt")
                    if is_best:
                        save_atomic(ckpt, self.out_dir / "best.pt")
                log.log(last)
                self.echo(
                    f"epoch {epoch + 1:>3}/{cfg.optim.epochs}  loss {row['train_loss']:.4f}  "
                    f"train {row['train_top1']:.2f}  test top-1 {test['top1']:.2f}  "
                    f"top-5 {test['top5']:.2f}  lr {row['lr']:.4g}  "
                    f"{row['images_per_s']:.0f} img/s"
                )
                if stop_after is not None and epoch + 1 >= stop_after:
                    break
        finally:
            log.close()
        if last is None:  # resumed a finished run: report from its checkpoint
            last_test = self.evaluate(d)
            last = {"epoch": self.start_epoch, **{f"test_{k}": v for k, v in last_test.items()}}
        result = {
            "finished": last["epoch"] == cfg.optim.epochs,
            "epochs": last["epoch"],
            "last_top1": last["test_top1"],
            "last_top5": last["test_top5"],
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "teacher_top1": teacher_top1,
            "wall_time_s": time.perf_counter() - wall,
            "images_per_s": last.get("images_per_s"),
            "method": cfg.method.name,
            "student": cfg.student.name,
            "teacher": cfg.teacher.name if cfg.teacher else None,
            "seed": cfg.run.seed,
            "processes": self.dist.world_size,
            "out_dir": str(self.out_dir),
        }
        if result["finished"] and main:
            (self.out_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        self.echo(
            f"done: last top-1 {result['last_top1']:.2f} (epoch {result['epochs']}), "
            f"best top-1 {result['best_top1']:.2f} (epoch {result['best_epoch']})"
            + (f", teacher {teacher_top1:.2f}" if teacher_top1 is not None else "")
        )
        return result
