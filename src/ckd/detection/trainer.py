"""The detection trainer: iteration-based SGD with warm-up and step decay, COCO evaluation.

Same conveniences as the classification trainer, from the same parts (:mod:`ckd.engine`):
seeds, progress bar, ``metrics.jsonl`` (one row per ``optim.log_every`` iterations and per
evaluation, keyed by ``iter``), AMP, atomic ``last.pt`` checkpoints that resume exactly (the
epoch's order and flips come from ``(seed, epoch)``, the global RNG state is saved, a resumed
epoch skips its trained batches without loading them, evaluation leaves the RNG untouched), a
run folder never overwritten without ``--resume`` and a resume refused under a different
config.

Under ``torchrun`` it runs data-parallel as the classification trainer does: ``data.batch_size``
is the global batch, each rank trains on its share of every batch, the student and the methods'
modules are wrapped in DistributedDataParallel (the teacher never is), the logged loss terms are
averaged over the ranks, and rank 0 alone evaluates (COCOeval needs every detection in one
place; the others wait), prints and writes files.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ckd.config import OptimConfig
from ckd.detection.config import DetConfig
from ckd.detection.data import (
    CocoDetection,
    batches_per_epoch,
    train_batches,
    val_loader,
)
from ckd.detection.distiller import DetDistiller
from ckd.detection.evaluate import evaluate_detector
from ckd.detection.methods import DET_METHODS, DetSetup
from ckd.detection.models import FPN_LEVELS, build_detector
from ckd.detection.shapes import make_shapes, shapes_present
from ckd.engine.build import amp_dtype, pick_device
from ckd.engine.checkpoint import (
    FORMAT,
    load_for_resume,
    rng_state,
    save_atomic,
    seed_everything,
    set_rng_state,
)
from ckd.engine.distributed import check_split, init_distributed, main_only, my_pieces
from ckd.engine.metrics import MetricsLog
from ckd.engine.schedule import learning_rate
from ckd.engine.trainer import TrainView, check_run_dir, config_difference, epoch_seed
from ckd.errors import ConfigError, RunDirError

_say = functools.partial(print, flush=True)


def build_datasets(cfg: DetConfig) -> tuple[CocoDetection, CocoDetection]:
    """Training and validation sets (the shapes set is generated first when absent)."""
    d = cfg.data
    if d.name == "shapes" and not shapes_present(d.root):
        if not d.generate:
            raise ConfigError(f"data.root: no shapes dataset in {d.root!r} (data.generate=false)")
        make_shapes(d.root, seed=0)
    masks = cfg.detector.arch == "mask_rcnn"
    common = dict(labels=d.labels, seed=cfg.run.seed)
    train = CocoDetection(
        d.root, d.train_split, True, masks, flip=d.flip, subset=d.train_subset, **common
    )
    val = CocoDetection(d.root, d.val_split, False, False, subset=d.val_subset, **common)
    if train.cat_to_label != val.cat_to_label:
        raise ConfigError(f"data: {d.train_split} and {d.val_split} have different categories")
    if len(train) == 0:
        raise ConfigError(f"data: no training image with a valid annotation in {d.root!r}")
    return train, val


def build_det_distiller(cfg: DetConfig, num_classes: int) -> DetDistiller:
    """Student (training sizes), teacher (evaluation sizes, weights loaded) and methods."""
    i = cfg.input
    student = build_detector(cfg.student, cfg.detector, i, num_classes, training=True)
    teacher = None
    if cfg.teacher is not None:
        teacher = build_detector(cfg.teacher, cfg.detector, i, num_classes, training=False)
    setup = DetSetup(
        num_classes,
        FPN_LEVELS,
        student.backbone.out_channels,
        teacher.backbone.out_channels if teacher is not None else None,
    )
    parts = cfg.method.parts()
    methods = [DET_METHODS.get(p.name)(p.options, setup) for p in parts]
    return DetDistiller(student, teacher, methods, tuple(i.min_size), (i.test_min_size,))


def det_learning_rate(o: Any, iteration: int) -> float:
    """The learning rate of 0-based ``iteration``: ``ckd.engine.schedule.learning_rate`` with
    one iteration per "epoch" (step decay at ``milestones``, linear warm-up from 0)."""
    plan = OptimConfig(
        epochs=o.iters,
        lr=o.lr,
        schedule=o.schedule,
        milestones=list(o.milestones),
        gamma=o.gamma,
        warmup_epochs=float(o.warmup_iters),
        min_lr=o.min_lr,
    )
    return learning_rate(plan, iteration, 0, 1)


def _first_piece(batch: torch.Tensor, ctx: Any) -> torch.Tensor:
    """This rank's share of a global batch of indices."""
    return my_pieces(batch, ctx, 1)[0]


class _Window:
    """Running sums of the loss terms since the last logged row."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.images, self.start = 0, 0, time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], images: int) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        self.images += images

    def reduce(self, ctx: Any) -> None:
        """Average the sums over the ranks (and add up their images)."""
        if not ctx.distributed or not self.sums:
            return
        names = list(self.sums)
        flat = torch.stack([torch.as_tensor(self.sums[k]).float() for k in names])
        flat = ctx.all_reduce_sum(flat) / ctx.world_size
        self.sums = dict(zip(names, flat, strict=True))
        count = torch.tensor([float(self.images)], device=flat.device)
        self.images = int(ctx.all_reduce_sum(count).item())

    def row(self, it: int, iters_per_epoch: int, lr: float) -> dict[str, Any]:
        """The metrics row of the window (means per step), then a fresh window."""
        row: dict[str, Any] = {"iter": it, "epoch": it / iters_per_epoch}
        row |= {f"train_{k}": (v / max(self.steps, 1)).item() for k, v in self.sums.items()}
        row["train_loss"] = sum(v for k, v in row.items() if k.startswith("train_"))
        row["lr"] = lr
        row["images_per_s"] = self.images / max(time.perf_counter() - self.start, 1e-9)
        if not all(math.isfinite(v) for v in row.values()):
            raise FloatingPointError(f"non-finite loss at iteration {it}: {row}")
        self.__init__()
        return row


class DetTrainer:
    """Builds everything from ``cfg`` up front, then :meth:`fit` trains, evaluates, checkpoints.

    Files in ``out_dir``: ``config.yaml``, ``metrics.jsonl``, ``tensorboard/``, ``last.pt`` and,
    once finished, ``result.json``.
    """

    def __init__(self, cfg: DetConfig, resume: bool = False, echo: Callable = _say) -> None:
        self.cfg = cfg
        self.dist, device = init_distributed(cfg.run.dist_backend, cfg.run.device)
        self.echo = main_only(self.dist, echo)
        check_split(cfg.data.batch_size, self.dist, 1)
        self.out_dir = Path(cfg.run.out_dir) if cfg.run.out_dir else cfg.default_out_dir()
        self.resume_from = check_run_dir(self.out_dir, resume)
        self.device = pick_device(device)
        self.amp = amp_dtype(cfg.run.amp, self.device)
        seed_everything(cfg.run.seed)
        self.train_set, self.val_set = build_datasets(cfg)
        self.masks = cfg.detector.arch == "mask_rcnn"
        d = build_det_distiller(cfg, self.train_set.num_classes)
        self.distiller = d.to(self.device)
        o = cfg.optim
        self.optimizer = torch.optim.SGD(
            [p for p in d.trainable_parameters() if p.requires_grad],
            lr=o.lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp is torch.float16)
        self.val_loader = val_loader(self.val_set, cfg.data.test_batch_size, cfg.data.num_workers)
        self.iters_per_epoch = batches_per_epoch(self.train_set, cfg.data.batch_size)
        self.start_iter = 0
        self.teacher_metrics: dict[str, float] | None = None
        if self.resume_from is not None:
            self._restore(load_for_resume(self.resume_from))
        self.ddp: DDP | None = None
        if self.dist.distributed:  # broadcasts rank 0's weights to every rank
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(TrainView(self.distiller), device_ids=ids)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("format") != FORMAT or ckpt.get("task") != "detection":
            raise RunDirError(f"{self.resume_from}: not a ckd detection training checkpoint")
        differs = config_difference(ckpt["config"], self.cfg.to_dict())
        if differs:
            raise ConfigError(f"--resume: {differs}")
        self.distiller.load_trainable_state_dict(
            {**{f"student.{k}": v for k, v in ckpt["model"].items()}, **ckpt["method"]}
        )
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start_iter = ckpt["iteration"]
        self.teacher_metrics = ckpt.get("teacher_metrics")
        set_rng_state(ckpt["rng"])

    def _checkpoint(self, iteration: int) -> dict[str, Any]:
        state = self.distiller.trainable_state_dict()
        return {
            "format": FORMAT,
            "task": "detection",
            "model": {k[8:]: v for k, v in state.items() if k.startswith("student.")},
            "method": {k: v for k, v in state.items() if not k.startswith("student.")},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": iteration,
            "teacher_metrics": self.teacher_metrics,
            "config": self.cfg.to_dict(),
            "rng": rng_state(),
        }

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """COCO AP of ``model`` (computed by rank 0, given to every rank), leaving the RNG and
        the distiller's mode as they were."""
        state, mode = rng_state(), self.distiller.training
        self.distiller.eval()
        try:
            metrics = None
            if self.dist.is_main:
                metrics = evaluate_detector(
                    model, self.val_loader, self.device, self.amp, self.masks
                )
            if self.dist.distributed:
                box = [metrics]
                dist.broadcast_object_list(box, src=0)
                metrics = box[0]
            assert metrics is not None
            return metrics
        finally:
            self.distiller.train(mode)
            set_rng_state(state)

    def train_step(self, images, targets, iteration: int) -> dict[str, torch.Tensor]:
        """One optimisation step at ``iteration``; returns the loss terms (detached)."""
        lr = det_learning_rate(self.cfg.optim, iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = [im.to(self.device, non_blocking=True) for im in images]
        targets = [
            {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in t.items()}
            for t in targets
        ]
        forward = self.ddp if self.ddp is not None else self.distiller.forward_train
        with torch.autocast(
            self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
        ):
            terms = forward(images, targets, iteration)
        loss = torch.stack([t.float() for t in terms.values()]).sum()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: v.detach().float() for k, v in terms.items()}

    def _say_metrics(self, who: str, m: dict[str, float]) -> None:
        parts = [f"box AP {m['box_AP']:.2f} (AP50 {m['box_AP50']:.2f}, AP75 {m['box_AP75']:.2f})"]
        if "mask_AP" in m:
            parts.append(f"mask AP {m['mask_AP']:.2f} (AP50 {m['mask_AP50']:.2f})")
        self.echo(f"{who}: " + ", ".join(parts))

    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``optim.iters`` (or stop after iteration ``stop_after``, checkpointed, to
        continue with ``resume``). Returns the result (``result.json`` once finished)."""
        cfg, d, o = self.cfg, self.distiller, self.cfg.optim
        main = self.dist.is_main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if main and self.resume_from is None:
            (self.out_dir / "config.yaml").write_text(
                yaml.safe_dump(cfg.to_dict(), sort_keys=False)
            )
        methods = " + ".join(m.name for m in cfg.method.parts())
        self.echo(
            f"run {self.out_dir}: {cfg.detector.arch} {methods}, student {cfg.student.backbone} "
            f"({sum(p.numel() for p in d.student.parameters()):,} parameters), {cfg.data.name} "
            f"{len(self.train_set)} train / {len(self.val_set)} val images, device {self.device}"
            + (f", DDP {dist.get_backend()} x {self.dist.world_size}" if self.ddp else "")
        )
        if d.teacher is not None and cfg.run.eval_teacher and self.teacher_metrics is None:
            self.teacher_metrics = self.evaluate(d.teacher)
            self._say_metrics(f"teacher {cfg.teacher.backbone}", self.teacher_metrics)
        log = MetricsLog(
            self.out_dir,
            cfg.run.tensorboard,
            resume_epoch=self.start_iter if self.resume_from else None,
            enabled=main,
            step_key="iter",
        )
        end = o.iters if stop_after is None else min(o.iters, max(stop_after, self.start_iter))
        wall, it = time.perf_counter(), self.start_iter
        window = _Window()
        metrics: dict[str, float] = {}
        show = cfg.run.progress and sys.stderr.isatty() and main
        bar = tqdm(total=o.iters, initial=it, disable=not show, leave=False, dynamic_ncols=True)
        d.train()
        try:
            for step, images, targets in islice(self.batches(it), end - it):
                window.add(self.train_step(images, targets, step), len(images))
                it = step + 1
                bar.update(1)
                evaluate = it % o.eval_every == 0 or it == o.iters
                if it % o.log_every == 0 or evaluate or it == end:
                    window.reduce(self.dist)
                    row = window.row(it, self.iters_per_epoch, det_learning_rate(o, step))
                    self._say_row(row)
                    if evaluate:
                        metrics = self.evaluate(d.student)
                        row |= {f"val_{k}": v for k, v in metrics.items()}
                        self._say_metrics(f"iter {it}", metrics)
                    log.log(row)
                    bar.set_postfix(loss=f"{row['train_loss']:.3f}")
                if main and (it % o.checkpoint_every == 0 or it == end):
                    save_atomic(self._checkpoint(it), self.out_dir / "last.pt")
        finally:
            bar.close()
            log.close()
        if not metrics and it == o.iters:  # resumed a finished run
            metrics = self.evaluate(d.student)
        return self._result(it, metrics, time.perf_counter() - wall)

    def batches(self, start: int) -> Iterator[tuple[int, list, list]]:
        """``(iteration, images, targets)`` from iteration ``start`` on, epoch after epoch.

        An epoch's order and flips come from ``(seed, epoch)``, and the global RNG (the sizes
        drawn, the RoI sampling) is re-seeded from it at the epoch's start; a run resumed
        mid-epoch skips the trained batches and goes on with the checkpoint's RNG state."""
        it, cfg = start, self.cfg
        while True:
            epoch, position = divmod(it, self.iters_per_epoch)
            seed = epoch_seed(cfg.run.seed, epoch)
            if position == 0:  # each rank its own RoI sampling and sizes
                seed_everything(seed + 7919 * self.dist.rank)
            data = cfg.data
            piece = None
            if self.dist.distributed:
                piece = functools.partial(_first_piece, ctx=self.dist)
            loader = train_batches(
                self.train_set, data.batch_size, data.num_workers, seed, epoch, position, piece
            )
            for images, targets in loader:
                yield it, images, targets
                it += 1

    def _say_row(self, row: dict[str, Any]) -> None:
        terms = [(k[6:], v) for k, v in row.items() if k.startswith("train_") and k != "train_loss"]
        self.echo(
            f"iter {row['iter']:>6}/{self.cfg.optim.iters}  loss {row['train_loss']:.4f}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in terms)
            + f"  lr {row['lr']:.4g}  {row['images_per_s']:.1f} img/s"
        )

    def _result(self, it: int, metrics: dict[str, float], seconds: float) -> dict[str, Any]:
        cfg = self.cfg
        result = {
            "finished": it == cfg.optim.iters,
            "iterations": it,
            **metrics,
            "teacher_metrics": self.teacher_metrics,
            "wall_time_s": seconds,
            "arch": cfg.detector.arch,
            "method": cfg.method.name,
            "student": cfg.student.backbone,
            "teacher": cfg.teacher.backbone if cfg.teacher else None,
            "seed": cfg.run.seed,
            "processes": self.dist.world_size,
            "out_dir": str(self.out_dir),
        }
        if result["finished"] and self.dist.is_main:
            (self.out_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        if metrics:
            self._say_metrics(f"done ({it} iterations)", metrics)
        return result
