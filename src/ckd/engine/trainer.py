"""The trainer: one loop for every method, teacher training included.

It sums the loss terms a method returns; it never knows which method runs. Each epoch's
randomness (shuffle order, augmentation, worker seeds) is derived from ``(seed, epoch)`` alone,
and checkpoints hold the model, optimizer, grad scaler, epoch, best accuracy and RNG states, so a
run that is stopped and resumed ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from ckd.config import Config
from ckd.engine.build import (
    amp_dtype,
    build_data,
    build_distiller,
    pick_device,
    test_loader,
    train_loader,
)
from ckd.engine.checkpoint import (
    FORMAT,
    load_checkpoint,
    rng_state,
    save_atomic,
    seed_everything,
    set_rng_state,
)
from ckd.engine.evaluate import evaluate
from ckd.engine.metrics import MetricsLog
from ckd.engine.schedule import learning_rate
from ckd.errors import ConfigError, RunDirError

# Keys that may differ between the run being resumed and the config given to resume it.
_RESUME_FREE = {"run.progress", "run.tensorboard", "run.out_dir", "source", "data.num_workers"}


_say = functools.partial(print, flush=True)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of every random draw of one epoch."""
    return (seed * 1_000_003 + epoch) % 2**63


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Trainer:
    """Builds everything from ``cfg`` up front (so a bad input fails before any file is written),
    then :meth:`fit` trains, evaluates every epoch and checkpoints.

    Files in ``out_dir``: ``config.yaml``, ``metrics.jsonl``, ``tensorboard/``, ``last.pt``,
    ``best.pt`` and, once finished, ``result.json``.
    """

    def __init__(
        self,
        cfg: Config,
        resume: bool = False,
        echo: Callable[[str], None] = _say,
    ) -> None:
        self.cfg = cfg
        self.echo = echo
        self.out_dir = Path(cfg.run.out_dir) if cfg.run.out_dir else cfg.default_out_dir()
        self.resume_from = self._check_run_dir(resume)
        self.device = pick_device(cfg.run.device)
        self.amp = amp_dtype(cfg.run.amp, self.device)
        seed_everything(cfg.run.seed)
        self.data = build_data(cfg.data, seed=cfg.run.seed)
        self.test_loader = test_loader(self.data, cfg.data, self.device)
        self.distiller = build_distiller(cfg, self.data.info, len(self.data.train)).to(self.device)
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

    # ------------------------------------------------------------------ set-up
    def _check_run_dir(self, resume: bool) -> Path | None:
        last = self.out_dir / "last.pt"
        if resume:
            if not last.is_file():
                raise RunDirError(f"--resume: no checkpoint {last} to resume from")
            return last
        if last.exists() or (self.out_dir / "result.json").exists():
            raise RunDirError(
                f"{self.out_dir} already holds a run; pass --resume to continue it or set "
                "run.out_dir to a new folder (nothing was overwritten)"
            )
        return None

    def _restore(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("format") != FORMAT:
            raise RunDirError(f"{self.resume_from}: not a ckd training checkpoint")
        old, new = _flat(ckpt["config"]), _flat(self.cfg.to_dict())
        for key in sorted(set(old) | set(new)):
            if key not in _RESUME_FREE and old.get(key) != new.get(key):
                raise ConfigError(
                    f"--resume: {key} is {new.get(key)!r} but the run was started with "
                    f"{old.get(key)!r}"
                )
        self.distiller.student.load_state_dict(ckpt["model"])
        self.distiller.load_trainable_state_dict(
            {**{f"student.{k}": v for k, v in ckpt["model"].items()}, **ckpt["method"]}
        )
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = ckpt["epoch"]
        self.best_top1, self.best_epoch = ckpt["best_top1"], ckpt["best_epoch"]
        set_rng_state(ckpt["rng"])

    # ------------------------------------------------------------------ training
    def _progress(self, iterable, **kw):
        enabled = self.cfg.run.progress and sys.stderr.isatty()
        return tqdm(iterable, disable=not enabled, leave=False, dynamic_ncols=True, **kw)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training set; returns the epoch's mean loss terms and accuracy."""
        seed_everything(epoch_seed(self.cfg.run.seed, epoch))
        generator = torch.Generator().manual_seed(epoch_seed(self.cfg.run.seed, epoch))
        loader = train_loader(self.data, self.cfg.data, self.device, generator)
        iters = len(loader)
        self.distiller.train()
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=self.device)
        seen = 0
        start = time.perf_counter()
        bar = self._progress(loader, desc=f"epoch {epoch + 1}/{self.cfg.optim.epochs}")
        for i, (images, targets, index) in enumerate(bar):
            lr = learning_rate(self.cfg.optim, epoch, i, iters)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            with torch.autocast(
                self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
            ):
                logits, terms = self.distiller.forward_train(
                    images, targets, epoch=epoch, step=epoch * iters + i, index=index
                )
            loss = torch.stack([t.float() for t in terms.values()]).sum()
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float() * targets.numel()
            correct += (logits.detach().argmax(1) == targets).sum()
            seen += targets.numel()
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4g}")
        elapsed = time.perf_counter() - start
        row = {f"train_{k}": (v / seen).item() for k, v in sums.items()}
        row["train_loss"] = sum(row.values())
        row["train_top1"] = 100.0 * correct.item() / seen
        row["lr"] = lr
        row["train_time_s"] = elapsed
        row["images_per_s"] = seen / elapsed
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
        return evaluate(model, self.test_loader, self.device, self.amp)

    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``optim.epochs`` (or stop after epoch ``stop_after``, to continue later with
        ``resume``). Returns the result (also written to ``result.json`` when finished)."""
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.resume_from is None:
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
            "out_dir": str(self.out_dir),
        }
        if result["finished"]:
            (self.out_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        self.echo(
            f"done: last top-1 {result['last_top1']:.2f} (epoch {result['epochs']}), "
            f"best top-1 {result['best_top1']:.2f} (epoch {result['best_epoch']})"
            + (f", teacher {teacher_top1:.2f}" if teacher_top1 is not None else "")
        )
        return result
