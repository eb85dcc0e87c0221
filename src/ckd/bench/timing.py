"""Timing and memory of training steps, for ``ckd bench speed`` (:mod:`ckd.bench.speed`) and the
GPU benchmark scripts: a *variant* is anything with ``device``, ``steps_per_epoch``,
``batches(epoch)`` and ``step(batch, epoch, i)`` (:class:`TrainerSteps` wraps a trainer; the
official code's step is :class:`ckd.bench.reference.ReferenceSteps`)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

import ckd.tasks  # noqa: F401  (registers the tasks and their config schemas)
from ckd.config import config_from_dict
from ckd.engine import Trainer
from ckd.engine.window import Window
from ckd.losses import ckd_loss, kd_loss


@dataclass
class BenchSpec:
    """What ``ckd bench speed`` times: the pair, the batch, how many steps and rounds, where."""

    teacher: str = "resnet56"
    student: str = "resnet20"
    batch_size: int = 64
    steps: int = 15
    warmup: int = 3
    rounds: int = 3
    num_classes: int = 100
    num_workers: int = 2
    device: str = "auto"
    threads: int | None = None  # torch threads (None: torch's default)
    n_train: int | None = None  # default: enough for warmup + steps batches
    reference: str | None = None  # a checkout of the official CKD code (--reference)

    def train_size(self) -> int:
        return self.n_train or self.batch_size * (self.warmup + self.steps)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant(Protocol):
    """A training step to time: ours (:class:`TrainerSteps`) or the official code's
    (:class:`~ckd.bench.reference.ReferenceSteps`)."""

    device: torch.device
    steps_per_epoch: int

    def batches(self, epoch: int) -> Iterator[Any]:
        """The epoch's batches, as :meth:`step` takes them."""
        ...

    def step(self, batch: Any, epoch: int, i: int) -> None:
        """Train on ``batch``, the ``i``-th of ``epoch``."""
        ...


class TrainerSteps:
    """A :class:`~ckd.engine.Trainer` as a timed variant: its loader's steps, its
    ``train_step``."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.device = trainer.runtime.device
        self.steps_per_epoch = trainer.task.loader.steps_per_epoch

    def batches(self, epoch: int) -> Iterator[Any]:
        self.trainer.distiller.train()
        return iter(self.trainer.task.loader.epoch(epoch))

    def step(self, batch: Any, epoch: int, i: int) -> None:
        t = self.trainer
        t.train_step(batch, epoch, epoch * self.steps_per_epoch + i, t.cfg.optim.lr)


def _close(it: Iterator[Any]) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


class StepTimer:
    """Where a step's time goes: input, teacher outputs (live or cached), student forward, loss
    (the rest of the forward) and backward + optimizer. Hooks on the trainer's student and
    teacher and wrappers around its teacher source and ``forward_train``; it synchronises CUDA
    at each boundary, so use it for a breakdown, not for throughput."""

    PARTS = ("input", "teacher", "student forward", "loss", "backward + optimizer")

    def __init__(self, trainer: Trainer) -> None:
        self.trainer, self.device = trainer, trainer.runtime.device
        self.totals = dict.fromkeys(self.PARTS, 0.0)
        self._start: dict[str, float] = {}
        self._in_source = False
        d = trainer.distiller
        self._handles = [
            d.student.register_forward_pre_hook(self._enter("student forward")),
            d.student.register_forward_hook(self._leave("student forward")),
        ]
        if d.teacher is not None:
            self._handles += [
                d.teacher.register_forward_pre_hook(self._enter("teacher")),
                d.teacher.register_forward_hook(self._leave("teacher")),
            ]
        self._forward_train = d.forward_train
        d.forward_train = self._timed_forward  # type: ignore[method-assign]  # close() removes it

    def now(self) -> float:
        _sync(self.device)
        return time.perf_counter()

    def inner(self) -> float:
        return sum(self.totals[p] for p in ("teacher", "student forward", "loss"))

    def _enter(self, part: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            if not (part == "teacher" and self._in_source):
                self._start[part] = self.now()

        return hook

    def _leave(self, part: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            if part in self._start:
                self.totals[part] += self.now() - self._start.pop(part)

        return hook

    def _timed_forward(self, *args: Any, **kw: Any) -> Any:
        source = kw.get("teacher")
        if callable(source):  # fast path: time the teacher source (live or cached) as a whole
            kw["teacher"] = functools.partial(self._timed_source, source)
        before = self.totals["teacher"] + self.totals["student forward"]
        start = self.now()
        out = self._forward_train(*args, **kw)
        inside = self.totals["teacher"] + self.totals["student forward"] - before
        self.totals["loss"] += self.now() - start - inside
        return out

    def _timed_source(self, source: Callable[[], Any]) -> Any:
        start, self._in_source = self.now(), True
        try:
            return source()
        finally:
            self._in_source = False
            self.totals["teacher"] += self.now() - start

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        del self.trainer.distiller.forward_train


def timed_steps(variant: Variant, epoch: int) -> Generator[float, None, None]:
    """The steps of ``epoch`` one at a time: yields the seconds each took (batch included)."""
    it = variant.batches(epoch)
    try:
        for i in range(variant.steps_per_epoch):
            start = time.perf_counter()
            variant.step(next(it), epoch, i)
            _sync(variant.device)
            yield time.perf_counter() - start
    finally:
        _close(it)


def interleaved_ratio(a: Variant, b: Variant, epochs: range, warmup: int, steps: int) -> float:
    """Median over steps of (step time of ``a``) / (step time of ``b``), the two variants
    taking turns step by step (order alternating): a fine-grained comparison on a noisy
    machine."""
    ratios = []
    for epoch in epochs:
        ga, gb = timed_steps(a, epoch), timed_steps(b, epoch)
        try:
            for _ in range(warmup):
                next(ga), next(gb)
            for i in range(steps):
                if i % 2:
                    tb, ta = next(gb), next(ga)
                else:
                    ta, tb = next(ga), next(gb)
                ratios.append(ta / tb)
        finally:
            ga.close()
            gb.close()
    return statistics.median(ratios)


def prime(variant: Variant, epoch: int, n: int) -> float:
    """``n`` untimed steps of ``epoch`` (passing over it again if it is shorter): compiles a
    compiled variant, warms up and captures a graphed one. Returns the seconds."""
    start, done = time.perf_counter(), 0
    while done < n:
        it = variant.batches(epoch)
        try:
            for i, batch in enumerate(it):
                variant.step(batch, epoch, i)
                done += 1
                if done == n:
                    break
        finally:
            _close(it)
    _sync(variant.device)
    return time.perf_counter() - start


def run_steps(
    variant: Variant,
    epoch: int,
    warmup: int,
    steps: int,
    timer: StepTimer | None = None,
    before_close: Callable[[], None] | None = None,
) -> float:
    """Run ``warmup`` then ``steps`` training steps of ``epoch``; seconds the timed ones took.
    ``before_close`` is called after the steps, while the epoch's loader is still open."""
    iters = variant.steps_per_epoch
    if warmup + steps > iters:
        raise ValueError(f"{warmup} + {steps} steps asked, the epoch has {iters}")
    it = variant.batches(epoch)
    try:
        for i in range(warmup):
            variant.step(next(it), epoch, i)
        _sync(variant.device)
        start = time.perf_counter()
        for i in range(warmup, warmup + steps):
            if timer is None:
                variant.step(next(it), epoch, i)
                continue
            t0 = timer.now()
            batch = next(it)
            t1 = timer.now()
            before = timer.inner()
            variant.step(batch, epoch, i)
            step = timer.now() - t1
            timer.totals["input"] += t1 - t0
            timer.totals["backward + optimizer"] += step - (timer.inner() - before)
        _sync(variant.device)
        elapsed = time.perf_counter() - start
        if before_close is not None:
            before_close()
        return elapsed
    finally:
        _close(it)


def train_epoch(trainer: Trainer, epoch: int) -> float:
    """Seconds of one training epoch as ``Trainer.fit`` runs it (each step's
    ``train_step``, the task's statistics and the loss terms summed on the device; no
    evaluation, no checkpoint), the device synchronised at the end."""

    window, spe = Window(), trainer.steps_per_epoch
    trainer.distiller.train()
    _sync(trainer.runtime.device)
    start = time.perf_counter()
    for i, micro_batches in enumerate(trainer.task.loader.epoch(epoch)):
        step = epoch * spe + i
        done = trainer.train_step(micro_batches, epoch, step, trainer.schedule(step))
        for mb, (logits, terms) in zip(micro_batches, done, strict=True):
            window.add(terms, trainer.task.train_stats(logits, mb.targets), len(mb.index))
    _sync(trainer.runtime.device)
    return time.perf_counter() - start


def _quiet(_msg: str) -> None:
    pass


def loss_microbench(batch: int, classes: int, repeats: int = 200) -> dict[str, float]:
    """Microseconds per forward + backward of the CKD and KD losses alone, interleaved."""

    g = torch.Generator().manual_seed(0)
    s = torch.randn(batch, classes, generator=g, requires_grad=True)
    t = torch.randn(batch, classes, generator=g)
    fns = {"ckd": lambda: ckd_loss(s, t, 1.0), "kd": lambda: kd_loss(s, t, 4.0)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn().backward()
            times[name].append(time.perf_counter() - start)
            s.grad = None
    return {k: 1e6 * statistics.median(v) for k, v in times.items()}


def _vm_hwm_mib() -> float:
    """This process's peak RSS (``VmHWM``; ``ru_maxrss`` would include the parent's before
    ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _children_pss_mib() -> float:
    """Summed proportional set size of this process's child processes (DataLoader workers)."""
    total = 0.0
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if stat.read_text().rsplit(")", 1)[1].split()[1] != me:
                continue
            for line in (stat.parent / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) / 1024
    return total


def _peak_memory_child(args: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: a few steps of one variant, then its peak memory: the main
    process's peak RSS and its growth over the RSS after imports, the workers' PSS."""

    if args.get("threads"):
        torch.set_num_threads(args["threads"])
    baseline = _vm_hwm_mib()
    cfg = config_from_dict(args["config"])
    trainer = Trainer(cfg, echo=_quiet)
    if trainer.runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.runtime.device)
    workers: list[float] = []
    run_steps(
        TrainerSteps(trainer),
        0,
        args["warmup"],
        args["steps"],
        before_close=lambda: workers.append(_children_pss_mib()),
    )
    peak = _vm_hwm_mib()
    out = {"rss_mib": peak, "rss_growth_mib": peak - baseline, "workers_pss_mib": workers[0]}
    if trainer.runtime.device.type == "cuda":
        out["cuda_mib"] = torch.cuda.max_memory_allocated(trainer.runtime.device) / 2**20
    return out


def peak_memory(
    config: dict[str, Any], warmup: int, steps: int, threads: int | None = None
) -> dict[str, Any]:
    """Peak memory of one variant, measured in a fresh Python process."""
    payload = json.dumps({"config": config, "warmup": warmup, "steps": steps, "threads": threads})
    proc = subprocess.run(
        [sys.executable, "-m", "ckd.bench.timing", "--memory-child", payload],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def profile_table(trainer: Trainer, epoch: int, warmup: int, steps: int, rows: int = 12) -> str:
    """torch.profiler's top operators (self CPU time) over ``steps`` steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if trainer.runtime.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    run_steps(TrainerSteps(trainer), epoch, warmup, 1)
    with profile(activities=activities) as prof:
        run_steps(TrainerSteps(trainer), epoch, 0, steps)
    key = "self_cuda_time_total" if trainer.runtime.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


if __name__ == "__main__":  # the peak-memory child process
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
        print(json.dumps(_peak_memory_child(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m ckd.bench.timing --memory-child JSON (internal)")
