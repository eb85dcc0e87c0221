"""Where the teacher's outputs come from: the live teacher, or a cache of them.

The choice is made once, at start-up, by :func:`teacher_outputs`: a cache (``run.teacher_cache``,
:mod:`ckd.engine.cache`) when the run names one and it holds what the methods read, else the
live teacher (run lazily by the distiller, only when a method asks). The trainer asks the chosen
object for each micro-batch's :data:`~ckd.methods.distiller.TeacherSource` and never reads
``run.teacher_cache`` itself; ``ckd cache build`` builds a cache through
:func:`build_teacher_cache`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ckd.config import BaseConfig
from ckd.data.fast import MemoryData
from ckd.engine.cache import (
    CacheSource,
    TeacherCache,
    build_cache,
    cache_folder_problem,
    cache_identity,
    open_cache,
    remove_cache,
    remove_stale_builds,
    verify_cache,
)
from ckd.engine.loaders import MicroBatch
from ckd.engine.runtime import Runtime
from ckd.engine.schedule import Schedule
from ckd.engine.task import TASKS, Task
from ckd.errors import ConfigError
from ckd.methods.distiller import TeacherSource
from ckd.paths import output_path

#: Batches of the run's own first epoch that are recomputed to verify a teacher cache.
CACHE_VERIFY_BATCHES = 2


class LiveTeacher:
    """The teacher runs on each batch (lazily: only when a method reads its outputs)."""

    label = ""

    def source(self, micro: MicroBatch, epoch: int) -> TeacherSource:
        return None


class CachedTeacher:
    """The teacher's outputs of each (epoch, sample) view read from a cache."""

    def __init__(self, cache: TeacherCache, device: torch.device, features: bool) -> None:
        self.cache, self.device, self.features = cache, device, features
        self.label = f"teacher cache {cache.folder}"

    def source(self, micro: MicroBatch, epoch: int) -> TeacherSource:
        return functools.partial(self.cache.outputs, epoch, micro.index, self.device, self.features)


def cache_epochs(task: Task, total_steps: int) -> int:
    """The epochs a cache must cover for a run of ``total_steps`` steps."""
    return -(-total_steps // task.loader.steps_per_epoch)


def _cached(cfg: BaseConfig, task: Task) -> tuple[CacheSource, MemoryData]:
    """The run's config as a cache identity reads it, and its training split in memory (a
    ConfigError when the run has neither)."""
    if not isinstance(cfg, CacheSource):
        raise ConfigError(f"run.teacher_cache: task {cfg.task} has no teacher cache")
    if task.memory is None:
        raise ConfigError("run.teacher_cache needs the training set in memory (data.loader=fast)")
    return cfg, task.memory


def build_for(
    cfg: BaseConfig, task: Task, epochs: int, features: bool, echo: Callable[[str], None]
) -> TeacherCache:
    """Build the cache in ``cfg.run.teacher_cache`` for ``task``'s training views (the folder
    must be absent or empty)."""
    d = task.distiller
    source, memory = _cached(cfg, task)
    folder = cfg.run.teacher_cache
    if folder is None or d.teacher is None:
        raise ConfigError("run.teacher_cache: the run names no cache or has no teacher")
    return build_cache(
        folder,
        d.teacher,
        memory,
        cache_identity(source, memory),
        epochs,
        batch_size=max(cfg.data.batch_size, cfg.data.test_batch_size),
        channels_last=task.runtime.channels_last,
        features=features,
        echo=echo,
    )


def teacher_outputs(
    cfg: BaseConfig, task: Task, total_steps: int, epoch: int, echo: Callable[[str], None]
) -> LiveTeacher | CachedTeacher:
    """The run's teacher outputs: the cache ``run.teacher_cache`` (built first when its folder
    is absent or empty; verified on the run's own batches of ``epoch``) when it holds what the
    methods read, else the live teacher."""
    folder, d, rt = cfg.run.teacher_cache, task.distiller, task.runtime
    if folder is None or d.teacher is None:
        return LiveTeacher()
    source, memory = _cached(cfg, task)
    epochs = cache_epochs(task, total_steps)
    if not rt.is_main:  # rank 0 opens (or builds) it first
        rt.dist.barrier()
    else:
        remove_stale_builds(folder)
    cache = open_cache(folder, cache_identity(source, memory), epochs)
    if cache is None:
        echo(
            f"teacher cache {folder}: none yet; building it ({epochs} epochs x "
            f"{task.loader.num_samples} views, logits)"
        )
        cache = build_for(cfg, task, epochs, features=False, echo=echo)
    if rt.is_main:
        rt.dist.barrier()
    if d.needs.preact or (d.needs.features and not cache.has_features):
        what = "pre-activation maps" if d.needs.preact else "features"
        echo(
            f"teacher cache {folder} holds no {what}, which a method here reads: running the "
            "live teacher instead" + ("" if d.needs.preact else " (`ckd cache build --features`)")
        )
        return LiveTeacher()
    sample = []
    for micro_batches in task.loader.epoch(min(epoch, epochs - 1)):
        sample += [(min(epoch, epochs - 1), m.inputs, m.index) for m in micro_batches]
        if len(sample) >= CACHE_VERIFY_BATCHES:
            break
    verify_cache(cache, d.teacher, sample, features=d.needs.features)
    return CachedTeacher(cache, rt.device, d.needs.features)


def live_teacher_possible(cfg: BaseConfig) -> bool:
    """Whether the run may use the live teacher alone (no cache named), so that compiling it
    pays off (``run.compile``)."""
    return cfg.run.teacher_cache is None


def build_teacher_cache(
    cfg: BaseConfig, features: bool, force: bool, echo: Callable[[str], None] = print
) -> str:
    """``ckd cache build``: build (or find up to date) the teacher cache ``run.teacher_cache``
    of the run ``cfg`` describes (its fast loader's views of every epoch); ``force``: replace a
    cache ckd made that is there (:func:`~ckd.engine.cache.cache_folder_problem`). Returns
    the line that says what was done."""
    if cfg.run.teacher_cache is None:
        raise ConfigError("cache build: give --out DIR or set run.teacher_cache")
    folder = output_path(cfg.run.teacher_cache, "run.teacher_cache")  # before any work
    if cfg.teacher_section() is None:
        raise ConfigError(f"cache build: method {cfg.method.name!r} uses no teacher")
    replace = force and os.path.lexists(folder)
    if replace:
        problem = cache_folder_problem(folder)
        if problem:
            raise ConfigError(
                f"--force: {folder} {problem}; --force replaces only a teacher cache ckd made, "
                "so nothing was deleted"
            )
    rt = Runtime.start(cfg.run, cfg.data.batch_size, cfg.optim.accum_steps)
    task = TASKS.get(cfg.task)(cfg, rt)
    rt.place(task.distiller, teacher_compiled=False)
    total = Schedule.of(cfg.optim, task.loader.steps_per_epoch, cfg.data.batch_size).total
    epochs = cache_epochs(task, total)
    if replace:
        remove_cache(folder)
    remove_stale_builds(folder)
    source, memory = _cached(cfg, task)
    cache = open_cache(folder, cache_identity(source, memory), epochs)
    if cache is not None and (cache.has_features or not features):
        return f"{folder}: up to date ({cache.epochs} epochs); nothing to do"
    if cache is not None:
        raise ConfigError(f"{folder} holds logits only; rebuild it with --features --force")
    cache = build_for(cfg, task, epochs, features, echo)
    size = sum(f.stat().st_size for f in Path(folder).iterdir()) / 2**20
    return (
        f"wrote {folder}: {cache.epochs} epochs x {task.loader.num_samples} views, "
        f"{size:.1f} MiB, in {cache.manifest['built']['seconds']} s"
    )
