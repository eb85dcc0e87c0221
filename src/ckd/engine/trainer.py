"""The trainer: one step-based loop for every task and method, teacher training included.

It sums the loss terms a distiller returns; it never knows which method or task runs (the
task, :mod:`ckd.tasks`, gives the distiller, the loader and the evaluation). A schedule counts
epochs or iterations (``optim.epochs`` / ``optim.iters``), converted once to optimisation steps
(:class:`~ckd.engine.schedule.Schedule`); evaluation, ``last.pt`` and metric rows come every
``run.eval_every`` / ``checkpoint_every`` / ``log_every`` of that unit (every epoch by default).

Each epoch's randomness (order, augmentation, worker seeds, the global RNG) is derived from
``(seed, epoch)`` alone, and checkpoints hold the model, method modules, optimizer, grad scaler,
position, best score and RNG states, so a run stopped and resumed (at any checkpoint, with any
number of processes) ends exactly where an uninterrupted one would. Under ``torchrun`` the
student and the methods' modules run in DistributedDataParallel (the teacher never does), each
process trains on its share of every global batch, metrics are averaged over the processes and
only rank 0 prints and writes files.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ckd.config import BaseConfig
from ckd.engine.checkpoint import FORMAT, rng_state, seed_everything, set_rng_state
from ckd.engine.graphs import GraphedStep, graph_obstacle
from ckd.engine.loaders import MicroBatch, epoch_seed
from ckd.engine.metrics import MetricsLog
from ckd.engine.rundir import RunFolder
from ckd.engine.runtime import Runtime
from ckd.engine.schedule import Schedule
from ckd.engine.teacher import teacher_outputs
from ckd.methods.base import Distiller

_say = functools.partial(print, flush=True)


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


@dataclasses.dataclass
class State:
    """Where a run is: steps done, the best score and the step it was reached at, the
    teacher's metrics, and the seconds trained by earlier processes of the run."""

    step: int = 0
    best: float = -math.inf
    best_step: int = -1
    teacher: dict[str, float] | None = None
    seconds: float = 0.0


class Window:
    """Per-micro-batch loss terms and task statistics (e.g. training accuracy) summed on the
    device since the last metrics row (no host sync per step), with the samples and time."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, str], torch.Tensor] = {}
        self.count, self.samples, self.start = 0, 0, time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], stats: dict[str, torch.Tensor], n: int) -> None:
        values = {
            **{("term", k): v for k, v in terms.items()},
            **{("stat", k): v for k, v in stats.items()},
        }
        for key, v in values.items():
            v = v.detach().float()
            self.sums[key] = self.sums[key] + v if key in self.sums else v
        self.count += 1
        self.samples += n

    def means(self, rt: Runtime) -> tuple[dict[str, float], dict[str, float], float, float]:
        """(terms, statistics): means over every micro-batch of every process; the global
        samples and the seconds; then a fresh window."""
        keys = list(self.sums)
        extra = torch.tensor([float(self.count), float(self.samples)], device=rt.device)
        flat = torch.cat([torch.stack([self.sums[k] for k in keys]), extra]) if keys else extra
        flat = rt.dist.all_reduce_sum(flat).tolist()
        count, samples = max(flat[-2], 1.0), flat[-1]
        seconds = time.perf_counter() - self.start
        self.__init__()
        means = {k: v / count for k, v in zip(keys, flat, strict=False)}
        terms = {name: v for (kind, name), v in means.items() if kind == "term"}
        stats = {name: v for (kind, name), v in means.items() if kind == "stat"}
        return terms, stats, samples, seconds


class Trainer:
    """Builds everything from ``cfg`` up front (a bad input fails before any file is written:
    the run folder and a resumed run's config are checked first), then :meth:`fit` trains."""

    def __init__(
        self, cfg: BaseConfig, resume: bool = False, echo: Callable[[str], None] = _say
    ) -> None:
        from ckd.tasks import TASKS

        self.cfg = cfg
        self.runtime = rt = Runtime.start(
            cfg.run, cfg.data.batch_size, cfg.optim.accum_steps, graph_obstacle(cfg)
        )
        self.echo = rt.echo(echo)
        out_dir = Path(cfg.run.out_dir) if cfg.run.out_dir else cfg.default_out_dir()
        self.folder = RunFolder(out_dir, resume, rt.is_main)
        self.out_dir = out_dir
        ckpt = self.folder.checkpoint(cfg.to_dict())
        seed_everything(cfg.run.seed)
        self.task = TASKS.get(cfg.task)(cfg, rt)
        self.distiller = d = self.task.distiller
        rt.place(d, teacher_compiled=cfg.run.teacher_cache is None)
        o = cfg.optim
        self.optimizer = torch.optim.SGD(
            d.trainable_parameters(),
            lr=o.lr,
            momentum=o.momentum,
            nesterov=o.nesterov,
            weight_decay=o.weight_decay,
            **rt.optimizer_options(),
        )
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp is torch.float16)
        self.steps_per_epoch = spe = self.task.loader.steps_per_epoch
        self.schedule = Schedule.of(o, spe, cfg.data.batch_size)
        self.by_epoch = o.unit == "epoch"
        self.unit = spe if self.by_epoch else 1  # steps per schedule unit
        self.unit_name = "epoch" if self.by_epoch else "iter"
        self.state = State()
        if ckpt is not None:
            self._restore(ckpt)
        self.teacher = teacher_outputs(
            cfg, self.task, self.schedule.total, self.state.step // spe, self.echo
        )
        self.ddp = rt.wrap(TrainView(d))
        self.graphed = (
            GraphedStep(d, self.optimizer, functools.partial(rt.autocast, cache=False), rt.device)
            if rt.cuda_graphs
            else None
        )

    # ------------------------------------------------------------------ state
    def _restore(self, ckpt: dict[str, Any]) -> None:
        d, spe = self.distiller, self.steps_per_epoch
        d.load_trainable_state_dict(
            {**{f"student.{k}": v for k, v in ckpt["model"].items()}, **ckpt["method"]}
        )
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        s = self.state
        if "step" in ckpt:
            s.step, s.best, s.best_step = ckpt["step"], ckpt["best"], ckpt["best_step"]
            s.teacher, s.seconds = ckpt.get("teacher"), ckpt.get("seconds", 0.0)
        elif "iteration" in ckpt:  # a detection run of an earlier release
            s.step, s.teacher = ckpt["iteration"], ckpt.get("teacher_metrics")
        else:  # a classification run of an earlier release: epochs done
            s.step, s.best = ckpt["epoch"] * spe, ckpt["best_top1"]
            s.best_step = ckpt["best_epoch"] * spe
        set_rng_state(ckpt["rng"])

    def _checkpoint(self) -> dict[str, Any]:
        state = self.distiller.trainable_state_dict()
        s = self.state
        return {
            "format": FORMAT,
            "task": self.cfg.task,
            "model": {k[8:]: v for k, v in state.items() if k.startswith("student.")},
            "method": {k: v for k, v in state.items() if not k.startswith("student.")},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": s.step,
            "epoch": s.step // self.steps_per_epoch,  # completed epochs
            "best": s.best,
            "best_step": s.best_step,
            "teacher": s.teacher,
            "seconds": s.seconds + time.perf_counter() - self._started,
            "config": self.cfg.to_dict(),
            "rng": rng_state(),
        }

    # ------------------------------------------------------------------ training
    def train_step(
        self, micro_batches: list[MicroBatch], epoch: int, step: int, lr: float
    ) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """One optimisation step over this rank's micro-batches (gradients accumulated, DDP's
        all-reduce only after the last); returns (student logits, loss terms) of each,
        detached. With ``run.cuda_graphs`` the step is a replayed CUDA graph
        (:mod:`ckd.engine.graphs`); its logits are valid until the next step."""
        if self.graphed is not None:
            source = self.teacher.source(micro_batches[0], epoch)
            return self.graphed(micro_batches, source, lr, epoch, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        rt = self.runtime
        if rt.compile == "reduce-overhead":  # torch.compile's CUDA graphs: a new step begins
            torch.compiler.cudagraph_mark_step_begin()
        forward = self.ddp if self.ddp is not None else self.distiller.forward_train
        gather = rt.dist.gather if rt.dist.distributed else None
        n = len(micro_batches)
        done = []
        for k, mb in enumerate(micro_batches):
            later = self.ddp is not None and k < n - 1
            with self.ddp.no_sync() if later else nullcontext():  # type: ignore[union-attr]
                with rt.autocast():
                    logits, terms = forward(
                        mb.inputs,
                        mb.targets,
                        teacher=self.teacher.source(mb, epoch),
                        epoch=epoch,
                        step=step,
                        index=mb.index,
                        gather=gather,
                    )
                loss = torch.stack([t.float() for t in terms.values()]).sum()
                self.scaler.scale(loss / n if n > 1 else loss).backward()
            done.append((logits.detach(), {k: v.detach() for k, v in terms.items()}))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return done

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The task's metrics of ``model``, leaving the RNG and the distiller's mode as they
        were (so evaluating changes nothing about the training that follows)."""
        state, mode = rng_state(), self.distiller.training
        self.distiller.eval()
        try:
            return self.task.evaluate(model)
        finally:
            self.distiller.train(mode)
            set_rng_state(state)

    def _position(self, step: int) -> dict[str, Any]:
        """A metrics row's position: ``epoch`` (epoch schedules) or ``iter`` and ``epoch``."""
        epoch = step / self.steps_per_epoch
        if not self.by_epoch:
            return {"iter": step, "epoch": epoch}
        return {"epoch": int(epoch) if epoch.is_integer() else epoch, "step": step}

    def _every(self, value: int | None, default: int) -> int:
        return value * self.unit if value is not None else default

    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to the schedule's end (or stop after ``stop_after`` of its unit, checkpointed,
        to continue with ``resume``). Returns the result (``result.json`` once finished)."""
        cfg, rt, task, d, s = self.cfg, self.runtime, self.task, self.distiller, self.state
        self._started = time.perf_counter()
        total, spe = self.schedule.total, self.steps_per_epoch
        end = total if stop_after is None else min(total, max(stop_after * self.unit, s.step))
        eval_every = self._every(cfg.run.eval_every, spe)
        ckpt_every = self._every(cfg.run.checkpoint_every, eval_every)
        log_every = self._every(cfg.run.log_every, eval_every)
        if s.step >= total and self.folder.result() is not None:
            self.echo(f"run {self.out_dir}: finished already; nothing to do")
            return self.folder.result()  # type: ignore[return-value]
        self.folder.start(cfg.to_dict())
        methods = " + ".join(m.name for m in cfg.method.parts())
        self.echo(f"run {self.out_dir}: {methods}, {task.describe()}, device {rt.device}")
        extra = [self.teacher.label] if self.teacher.label else []
        if cfg.optim.accum_steps > 1:
            extra.append(f"{cfg.optim.accum_steps} micro-batches per step")
        self.echo(", ".join([rt.describe(), *extra]))
        student_name, teacher_name = task.model_names()
        if d.teacher is not None and cfg.run.eval_teacher and s.teacher is None:
            s.teacher = self.evaluate(d.teacher)
            self.echo(f"teacher {teacher_name}: {task.format_metrics(s.teacher)}")
        log = MetricsLog(
            self.out_dir,
            cfg.run.tensorboard,
            resume_epoch=s.step // self.unit if self.folder.resume else None,
            enabled=rt.is_main,
            step_key=self.unit_name,
        )
        show = cfg.run.progress and sys.stderr.isatty() and rt.is_main
        bar = tqdm(total=total, initial=s.step, disable=not show, leave=False, dynamic_ncols=True)
        window, last, metrics, lr = Window(), None, None, self.schedule(s.step)
        d.train()
        try:
            while s.step < end:
                epoch, position = divmod(s.step, spe)
                if position == 0:  # each rank its own draws (dropout, RoI sampling, sizes)
                    seed_everything(epoch_seed(cfg.run.seed, epoch) + 7919 * rt.dist.rank)
                for micro_batches in self.task.loader.epoch(epoch, position):
                    lr = self.schedule(s.step)
                    for mb, (logits, terms) in zip(
                        micro_batches,
                        self.train_step(micro_batches, epoch, s.step, lr),
                        strict=True,
                    ):
                        window.add(terms, task.train_stats(logits, mb.targets), len(mb.index))
                    s.step += 1
                    bar.update(1)
                    evaluate = s.step % eval_every == 0 or s.step == total
                    save = evaluate or s.step % ckpt_every == 0 or s.step == end
                    if save or s.step % log_every == 0:
                        row = self._row(window, lr)
                        metrics = None
                        if evaluate:
                            rt.dist.broadcast_buffers(d.student)  # rank 0's BN statistics
                            rt.dist.broadcast_buffers(d.methods)
                            metrics = self.evaluate(d)
                            row |= {f"test_{k}": v for k, v in metrics.items()}
                            if metrics[task.score] > s.best:
                                s.best, s.best_step = metrics[task.score], s.step
                        if save:
                            best = evaluate and s.best_step == s.step
                            self.folder.save(self._checkpoint(), best)
                        log.log(row)
                        self._say(row, metrics)
                        last = row if evaluate else last
                    if s.step >= end:
                        break
        finally:
            bar.close()
            log.close()
        if last is None and s.step >= total:  # a finished run resumed: report its model
            last = {f"test_{k}": v for k, v in self.evaluate(d).items()}
        return self._result(last or {}, student_name, teacher_name)

    def _row(self, window: Window, lr: float) -> dict[str, Any]:
        terms, stats, samples, seconds = window.means(self.runtime)
        row = {**self._position(self.state.step), **{f"train_{k}": v for k, v in terms.items()}}
        row["train_loss"] = sum(terms.values())
        row |= {f"train_{k}": v for k, v in stats.items()}
        row |= {"lr": lr, "train_time_s": seconds, "images_per_s": samples / max(seconds, 1e-9)}
        if not all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
            raise FloatingPointError(
                f"non-finite loss at step {self.state.step}: {row}; the last checkpoint is kept"
            )
        return row

    def _say(self, row: dict[str, Any], metrics: dict[str, float] | None) -> None:
        o = self.cfg.optim
        where = self.unit_name
        pos = row[where]
        width = len(str(o.length))
        terms = [
            f"{k[6:]} {v:.4f}"
            for k, v in row.items()
            if k.startswith("train_") and k not in ("train_loss", "train_top1", "train_time_s")
        ]
        text = (
            f"{where} {pos:>{width}}/{o.length}  loss {row['train_loss']:.4f} ({', '.join(terms)})"
        )
        if "train_top1" in row:
            text += f"  train {row['train_top1']:.2f}"
        if metrics is not None:
            text += f"  test {self.task.format_metrics(metrics)}"
        self.echo(f"{text}  lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s")

    def _result(self, last: dict[str, Any], student: str, teacher: str | None) -> dict[str, Any]:
        cfg, s, spe = self.cfg, self.state, self.steps_per_epoch
        score = self.task.score
        done = s.step >= self.schedule.total
        result: dict[str, Any] = {
            "finished": done,
            "task": cfg.task,
            "epochs": s.step // spe if self.by_epoch else s.step / spe,
            "steps": s.step,
            **{f"last_{k[5:]}": v for k, v in last.items() if k.startswith("test_")},
            f"best_{score}": s.best,
            f"best_{self.unit_name}": s.best_step // self.unit,
            **{f"teacher_{k}": v for k, v in (s.teacher or {}).items()},
            "wall_time_s": s.seconds + time.perf_counter() - self._started,
            "images_per_s": last.get("images_per_s"),
            "method": cfg.method.name,
            "student": student,
            "teacher": teacher,
            "seed": cfg.run.seed,
            "processes": self.runtime.dist.world_size,
            "out_dir": str(self.out_dir),
        }
        if done:
            self.folder.finish(result)
        unit = self.unit_name
        where = f"{unit} {s.step // self.unit}"
        if not done:
            self.echo(f"stopped after {where}; continue with --resume")
            return result
        tested = {k[5:]: v for k, v in last.items() if k.startswith("test_")}
        self.echo(
            f"done: last {self.task.format_metrics(tested)} ({where}), "
            f"best {score} {s.best:.2f} ({unit} {s.best_step // self.unit})"
        )
        return result
