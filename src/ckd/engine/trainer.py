"""The trainer: one step-based loop for every task and method, teacher training included.

It sums the loss terms a distiller returns; it never knows which method or task runs (the
task, :mod:`ckd.tasks`, gives the distiller, the loader and the evaluation). A schedule counts
epochs or iterations (``optim.epochs`` / ``optim.iters``), converted once to optimisation steps
(:class:`~ckd.engine.schedule.Schedule`); evaluation, ``last.pt`` and metric rows come every
``run.eval_every`` / ``checkpoint_every`` / ``log_every`` of that unit (every epoch by default).

Each epoch's randomness (order, augmentation, worker seeds, the global RNG) is derived from
``(seed, epoch)`` alone, and checkpoints hold the model, method modules, optimizer, grad scaler,
position, best score, RNG states and the loss sums of the unfinished metrics row, so a run
stopped and resumed (at any checkpoint, with any number of processes) ends exactly where an
uninterrupted one would; :mod:`ckd.engine.rundir` keeps the folder's files consistent whenever
the process is killed. A non-finite loss term is flagged on the device and found within
:data:`CHECK_EVERY` steps (:class:`~ckd.errors.Diverged`); SIGINT and SIGTERM stop the loop at
the next step boundary (:class:`~ckd.errors.Interrupted`). Under ``torchrun`` the
student and the methods' modules run in DistributedDataParallel (the teacher never does), each
process trains on its share of every global batch, metrics are averaged over the processes and
only rank 0 prints and writes files.

Why over 400 lines: the loop and what interrupts it (checkpoints, resume, the divergence check,
signals) share the loop's state and are read together; the device, the folder, the loaders, the
teacher outputs and the metrics window are modules of their own.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

import ckd.faults as faults
from ckd.config import BaseConfig
from ckd.engine.checkpoint import FORMAT, rng_state, seed_everything, set_rng_state
from ckd.engine.graphs import GraphedStep, graph_obstacle
from ckd.engine.loaders import MicroBatch, epoch_seed
from ckd.engine.metrics import MetricsLog
from ckd.engine.rundir import RunFolder
from ckd.engine.runtime import Runtime
from ckd.engine.schedule import Schedule
from ckd.engine.task import TASKS
from ckd.engine.teacher import live_teacher_possible, teacher_outputs
from ckd.engine.window import ProgressLines, Window
from ckd.errors import CheckpointError, Diverged, Interrupted, one_line
from ckd.methods.distiller import Distiller
from ckd.signals import StopRequests
from ckd.signals import name as signal_name

_say = functools.partial(print, flush=True)
#: Steps between two looks at the non-finite flag and at stop requests of other processes
#: (each look is one host sync; a metrics row looks too).
CHECK_EVERY = 50


class TrainView(nn.Module):
    """What DDP wraps: the student and the methods' modules (never the teacher, which the
    distiller keeps outside this module's parameters); forward = ``Distiller.forward_train``."""

    _distiller: Distiller

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


class Trainer:
    """Builds everything from ``cfg`` up front (a bad input fails before any file is written:
    the run folder is checked and locked first, a resumed run's config next, and a failure
    removes the folder again if this process made it), then :meth:`fit` trains."""

    def __init__(
        self, cfg: BaseConfig, resume: bool = False, echo: Callable[[str], None] = _say
    ) -> None:
        self.cfg = cfg
        obstacle = graph_obstacle(cfg, TASKS.get(cfg.task).fixed_shapes)
        self.runtime = rt = Runtime.start(
            cfg.run, cfg.data.batch_size, cfg.optim.accum_steps, obstacle
        )
        self.echo = rt.echo(echo)
        out_dir = Path(cfg.run.out_dir) if cfg.run.out_dir is not None else cfg.default_out_dir()
        self.folder = RunFolder(out_dir, resume, rt.is_main)  # checked and locked
        self.out_dir = out_dir
        try:
            self._build(cfg, rt)
        except BaseException as e:
            self.folder.close()  # a run that never started leaves the disk as it was
            if isinstance(e, KeyboardInterrupt):  # SIGINT, or SIGTERM as Interrupted
                raise self._stopped_before_start(e) from None
            raise

    def _stopped_before_start(self, e: KeyboardInterrupt) -> Interrupted:
        """A signal while the run was being prepared (data, teacher, its cache), with what is
        left: the run being resumed, as it was; a new run, nothing."""
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        if self.folder.resume:
            when, left = "continued", f"{self.out_dir} is as it was (continue with --resume)"
        else:
            when, left = "started", "nothing was kept (run the command again to start it)"
        return Interrupted(
            signum, f"stopped by {signal_name(signum)} before the run {when}; {left}"
        )

    def _build(self, cfg: BaseConfig, rt: Runtime) -> None:
        ckpt = self.folder.checkpoint(cfg.to_dict())
        seed_everything(cfg.run.seed)
        self.task = TASKS.get(cfg.task)(cfg, rt)
        self.distiller = d = self.task.distiller
        rt.place(d, teacher_compiled=live_teacher_possible(cfg))
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
        self._window: dict[str, Any] | None = None  # a checkpoint's unfinished metrics row
        self._saved: int | None = None  # the step of last.pt
        if ckpt is not None:
            try:
                self._restore(ckpt)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
                raise CheckpointError(
                    f"--resume: {self.folder.last} cannot be restored ({one_line(e, 200)})"
                ) from None
            self._saved = self.state.step
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
        self._window = ckpt.get("window")
        set_rng_state(ckpt["rng"])

    def _checkpoint(self, window: Window) -> dict[str, Any]:
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
            "window": window.state(self.runtime),
            "config": self.cfg.to_dict(),
            **self.task.checkpoint_extras(),  # e.g. the dataset's facts (export needs no data)
            "rng": rng_state(),
        }

    def _save(self, window: Window, best: bool) -> None:
        """``last.pt`` (and ``best.pt``) of this step, once its weights are known finite."""
        weights = [p.detach() for p in self.distiller.trainable_parameters()]
        if weights and not bool(torch.stack([torch.isfinite(p).all() for p in weights]).all()):
            raise Diverged(
                f"training diverged: non-finite weights at {self._where()}; {self._kept()}"
            )
        self.folder.save(self._checkpoint(window), best)
        self._saved = self.state.step

    def _where(self, done: int | None = None) -> str:
        """The step that made ``done`` steps (default: the current one): ``epoch 3, step 5 of
        12`` (``iteration 41`` for iteration schedules)."""
        done = self.state.step if done is None else done
        if done <= 0:
            return "the start"
        if not self.by_epoch:
            return f"iteration {done}"
        epoch, position = divmod(done - 1, self.steps_per_epoch)
        return f"epoch {epoch + 1}, step {position + 1} of {self.steps_per_epoch}"

    def _progress_where(self, step: int) -> str:
        """Where ``step`` steps are in the schedule, for a progress line."""
        if self.by_epoch:
            epoch, done = divmod(step, self.steps_per_epoch)
            return f"epoch {epoch + 1}/{self.cfg.optim.length}, step {done}/{self.steps_per_epoch}"
        return f"iter {step}/{self.cfg.optim.length}"

    def _kept(self) -> str:
        if self._saved is None:
            return "no checkpoint was written yet"
        return f"the last checkpoint, {self.folder.last} (at {self._where(self._saved)}), is kept"

    def _check(self, window: Window, stop: StopRequests) -> int:
        """A look at the window's non-finite flag (Diverged if it is set) and at stop requests:
        the signal to stop for (0: go on), the same on every process."""
        rt, signum = self.runtime, stop.signum
        bad, names = window.first_bad()
        if rt.dist.distributed:
            mine = [
                float(bad >= 0),
                float(signum == signal.SIGINT),
                float(signum == signal.SIGTERM),
            ]
            seen = rt.dist.all_reduce_sum(torch.tensor(mine, device=rt.device)).tolist()
            if seen[0] and bad < 0:
                raise Diverged(
                    f"training diverged: a non-finite loss on another process by "
                    f"{self._where()}; {self._kept()}"
                )
            signum = signal.SIGTERM if seen[2] else signal.SIGINT if seen[1] else 0
        if bad >= 0:
            raise Diverged(
                f"training diverged: a non-finite loss term ({', '.join(names)}) at "
                f"{self._where(bad + 1)}; {self._kept()}"
            )
        return signum

    def _halt(self, signum: int, window: Window, saved: bool) -> None:
        """Stop for ``signum`` at this step boundary: a checkpoint of it when one was just
        written or can be (the loader restarts exactly mid-epoch), else the last one stays."""
        where = self._where()
        if not saved and getattr(self.task.loader, "resumes_anywhere", False):
            self._save(window, best=False)
            saved = True
        kept = f"saved {self.folder.last}" if saved else self._kept()
        raise Interrupted(
            signum,
            f"stopped by {signal_name(signum)} at {where}; {kept} (continue with --resume)",
        )

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
            later = k < n - 1  # DDP's all-reduce waits for the last micro-batch
            with self.ddp.no_sync() if self.ddp is not None and later else nullcontext():
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
        to continue with ``resume``). Returns the result (``result.json`` once finished).

        SIGINT and SIGTERM stop it at the next step boundary (:meth:`_halt`); a non-finite loss
        term, weight or evaluation stops it with :class:`~ckd.errors.Diverged`. Either way the
        run folder holds a checkpoint to resume from, and its lock is released on return."""
        self.folder.hold()
        try:
            with StopRequests() as stop:
                return self._fit(stop_after, stop)
        finally:
            self.folder.close()

    def _fit(self, stop_after: int | None, stop: StopRequests) -> dict[str, Any]:
        cfg, rt, task, d, s = self.cfg, self.runtime, self.task, self.distiller, self.state
        self._started = time.perf_counter()
        total, spe = self.schedule.total, self.steps_per_epoch
        end = total if stop_after is None else min(total, max(stop_after * self.unit, s.step))
        eval_every = self._every(cfg.run.eval_every, spe)
        ckpt_every = self._every(cfg.run.checkpoint_every, eval_every)
        log_every = self._every(cfg.run.log_every, eval_every)
        finished = self.folder.result() if s.step >= total else None
        if finished is not None:
            self.echo(f"run {self.out_dir}: finished already; nothing to do")
            return finished
        self.folder.start(cfg.to_dict())
        methods = " + ".join(m.name for m in cfg.method.parts())
        self.echo(f"run {self.out_dir}: {methods}, {task.describe()}, device {rt.device}")
        extra = [self.teacher.label] if self.teacher.label else []
        if cfg.optim.accum_steps > 1:
            extra.append(f"{cfg.optim.accum_steps} micro-batches per step")
        self.echo(", ".join([rt.describe(), *extra]))
        if self.folder.resume and s.step > 0:
            self.echo(self._resuming())
        student_name, teacher_name = task.model_names()
        if d.teacher is not None and cfg.run.eval_teacher and s.teacher is None:
            s.teacher = self.evaluate(d.teacher)
            self.echo(f"teacher {teacher_name}: {task.format_metrics(s.teacher)}")
        log = MetricsLog(
            self.out_dir,
            cfg.run.tensorboard,
            resume_step=s.step if self.folder.resume else None,
            enabled=rt.is_main,
            step_key=self.unit_name,
            unit=self.unit,
        )
        # a run whose last checkpoint is its end, killed before result.json: its last row
        last = log.row_at(s.step) if s.step >= total else None
        show = cfg.run.progress and sys.stderr.isatty() and rt.is_main
        bar = tqdm(total=total, initial=s.step, disable=not show, leave=False, dynamic_ncols=True)
        lines = ProgressLines(
            cfg.run.progress_seconds,
            cfg.run.progress and not show and rt.is_main,
            self._progress_where,
            rt.dist.world_size,
            self.echo,
        )
        # the checkpoint's window holds every process's sums: rank 0 takes it over
        window = Window.restore(self._window if rt.is_main else None, rt.device)
        metrics, lr = None, self.schedule(s.step)
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
                        stats = task.train_stats(logits, mb.targets)
                        window.add(terms, stats, len(mb.index), s.step)
                    s.step += 1
                    bar.update(1)
                    faults.point("step")
                    evaluate = s.step % eval_every == 0 or s.step == total
                    save = evaluate or s.step % ckpt_every == 0 or s.step == end
                    row_due = save or s.step % log_every == 0
                    signum = 0
                    if (
                        row_due
                        or s.step % CHECK_EVERY == 0
                        or (stop.signum and not rt.dist.distributed)
                    ):
                        signum = self._check(window, stop)
                    if row_due:
                        row = self._row(window, lr)
                        metrics = None
                        if evaluate:
                            metrics = self._evaluate_student()
                            row |= {f"test_{k}": v for k, v in metrics.items()}
                            if metrics[task.score] > s.best:
                                s.best, s.best_step = metrics[task.score], s.step
                        log.log(row, sync=save)  # the row first: a checkpoint never lacks it
                        if save:
                            self._save(window, best=evaluate and s.best_step == s.step)
                        self._say(row, metrics)
                        lines.reset()
                        last = row if evaluate else last
                    else:
                        lines.tick(s.step, window)
                    if signum and s.step < end:
                        self._halt(signum, window, saved=save)
                    if s.step >= end:
                        break
        except Exception as e:
            if stop.signum and not isinstance(e, Diverged):  # e.g. a loader worker the signal hit
                raise Interrupted(
                    stop.signum,
                    f"stopped by {signal_name(stop.signum)} ({one_line(e, 200)}); {self._kept()} "
                    "(continue with --resume)",
                ) from None
            raise
        finally:
            bar.close()
            log.close()
        if last is None and s.step >= total:  # no row of the end: measure the model again
            last = {f"test_{k}": v for k, v in self.evaluate(d).items()}
        return self._result(last or {}, student_name, teacher_name)

    def _resuming(self) -> str:
        """Where a resumed run continues."""
        s, unit = self.state, self.unit
        done = s.step // unit if s.step % unit == 0 else round(s.step / unit, 2)
        return (
            f"resuming from {self.folder.last}: {self.unit_name} {done}/{self.cfg.optim.length} "
            f"done (step {s.step} of {self.schedule.total}), continuing with "
            f"{self.unit_name} {s.step // unit + 1}"
        )

    def _evaluate_student(self) -> dict[str, float]:
        """The student's metrics at this step (rank 0's BN statistics everywhere); a non-finite
        one is Diverged (never a best, never a finished run)."""
        d, rt = self.distiller, self.runtime
        rt.dist.broadcast_buffers(d.student)
        rt.dist.broadcast_buffers(d.methods)
        metrics = self.evaluate(d)
        broken = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
        if broken:
            raise Diverged(
                f"training diverged: the evaluation at {self._where()} gave a non-finite "
                f"{', '.join(broken)}; {self._kept()}"
            )
        return metrics

    def _row(self, window: Window, lr: float) -> dict[str, Any]:
        terms, stats, samples, seconds = window.means(self.runtime)
        row = {**self._position(self.state.step), **{f"train_{k}": v for k, v in terms.items()}}
        row["train_loss"] = sum(terms.values())
        row |= {f"train_{k}": v for k, v in stats.items()}
        row |= {"lr": lr, "train_time_s": seconds, "images_per_s": samples / max(seconds, 1e-9)}
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
