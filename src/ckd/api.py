"""The Python API: train a run, get its result and trained student back, evaluate a checkpoint.

::

    import ckd

    run = ckd.train("fashion_mnist/ckd", overrides=["optim.epochs=2"])   # or a YAML file,
    run.result["last_top1"], run.out_dir, run.config                     # a run folder, a dict
    logits = run.student(images)        # nn.Module, eval mode, CPU; images as the test split's
    ckd.evaluate(run.out_dir)           # top-1 / top-5 on the run's own test set
    student = ckd.load_student("runs/fashion_mnist/ckd/seed0")           # later, from its files

``ckd.build_cache`` builds a run's teacher-output cache as ``ckd cache build`` does.

Everything goes through what ``ckd train`` / ``ckd eval`` run (the same config checks, run
folder, checkpoints and test sets); a bad input raises the exception whose one-line message
the command line prints (:class:`~ckd.errors.ConfigError`, ``FileNotFoundError``, ...).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

import ckd.tasks  # noqa: F401  (registers the tasks and their config schemas)
from ckd.config import BaseConfig, load_train_config
from ckd.data import DatasetInfo
from ckd.engine import Trainer
from ckd.engine.distributed import shutdown
from ckd.engine.teacher import build_teacher_cache
from ckd.tasks.classification import Student, evaluate_checkpoint
from ckd.tasks.classification import load_student as load

#: What :func:`train` takes as a config: a YAML file, a shipped config's name
#: (``"fashion_mnist/ckd"``), a run folder (its saved ``config.yaml``) or a mapping.
ConfigSource = str | os.PathLike[str] | Mapping[str, Any]


@dataclass
class Run:
    """A trained (or stopped) run: its config, folder and result, and its student on demand."""

    config: BaseConfig
    out_dir: Path
    result: dict[str, Any]
    #: Whether this process wrote the run (rank 0 of a torchrun launch; always, otherwise).
    main: bool = True
    #: A task whose students ckd cannot rebuild from a checkpoint (detection) keeps the
    #: trainer's student here.
    _trained: nn.Module | None = field(default=None, repr=False)

    @property
    def checkpoint(self) -> Path:
        """The run's ``last.pt`` (the last epoch's state: the one reported)."""
        return self.out_dir / "last.pt"

    @functools.cached_property
    def _loaded(self) -> Student:
        return load(self.checkpoint)

    @property
    def student(self) -> nn.Module:
        """The trained student in eval mode on the CPU, rebuilt from ``last.pt``: the network
        with its input-normalisation wrapper when the run gave it ``input_mean`` /
        ``input_std``. It takes images prepared as the run's test split prepares them
        (normalised with :attr:`info`'s ``mean`` / ``std``) and gives logits."""
        if self._trained is not None:
            return self._trained
        return self._loaded.model

    @property
    def info(self) -> DatasetInfo:
        """The dataset's facts the student was trained for: classes, channels, image size and
        the normalisation of its inputs (classification runs)."""
        return self._loaded.info

    def evaluate(self, **options: Any) -> dict[str, Any]:
        """:func:`evaluate` of this run (its own test set unless told otherwise)."""
        return evaluate(self.out_dir, **options)


def train(
    config: ConfigSource,
    overrides: Sequence[str] | str = (),
    *,
    resume: bool = False,
    stop_after: int | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] | None = None,
) -> Run:
    """Train (or distill) as ``ckd train CONFIG OVERRIDES...`` does, and return the run.

    Args:
        config: a YAML file, a shipped config's name, a run folder, or a mapping of the
            config's sections (``{"data": {...}, "student": {...}, "method": {...}, ...}``).
        overrides: ``"key.path=value"`` strings applied over it (values parsed as YAML).
        resume: continue the run in ``run.out_dir`` (``--resume``).
        stop_after: stop after this many epochs (iterations for an iteration schedule),
            checkpointed; continue later with ``resume=True``.
        quiet: print nothing; ``echo``: where the progress lines go (default ``print``).

    Raises:
        ConfigError, RunDirError, DataError, CheckpointError, FileNotFoundError: bad input,
            before anything is written.
    """
    cfg = load_train_config(config, overrides)
    say = (lambda _line: None) if quiet else (echo or functools.partial(print, flush=True))
    try:
        trainer = Trainer(cfg, resume=resume, echo=say)
        result = trainer.fit(stop_after=stop_after)
    finally:
        shutdown()  # leave the process group of a torchrun launch (no-op otherwise)
    kept = None if cfg.task == "classification" else trainer.distiller.student.eval()
    return Run(cfg, trainer.out_dir, result, trainer.runtime.is_main, kept)


def load_student(source: str | os.PathLike[str]) -> nn.Module:
    """The trained student of a run folder (its ``last.pt``) or of a checkpoint of a run, in
    eval mode on the CPU, with its input-normalisation wrapper (see :attr:`Run.student`)."""
    return load(source).model


def evaluate(
    source: str | os.PathLike[str],
    *,
    data_root: str | None = None,
    full_test: bool = False,
    subset: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    amp: str = "none",
) -> dict[str, Any]:
    """Top-1 / top-5 (%) and mean loss of a run's checkpoint, as ``ckd eval`` measures them.

    The test set is the run's own (its ``data.test_subset``, drawn with its seed, as the run
    reported on), ``full_test`` the whole test split, ``subset`` a class-balanced subset of
    that many images. Returns ``{"top1", "top5", "loss", "n", "test_set"}`` (``test_set``:
    which set, in words).
    """
    found, metrics = evaluate_checkpoint(
        source,
        data_root=data_root,
        test_subset=subset,
        full_test=full_test,
        batch_size=batch_size,
        device=device,
        amp=amp,
    )
    return {**metrics, "test_set": found.test_set}


def build_cache(
    config: ConfigSource,
    overrides: Sequence[str] | str = (),
    *,
    out: str | os.PathLike[str] | None = None,
    features: bool = False,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> str:
    """Build (or find up to date) the teacher-output cache of a config's run, as ``ckd cache
    build`` does: the config with ``data.loader=fast`` and, with ``out``, ``run.teacher_cache``
    set to it; ``features``: also the teacher's features; ``force``: replace a cache (or a
    partial build of one) that is in the folder. Returns the line that says what was done."""
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    overrides.append("data.loader=fast")
    if out is not None:
        overrides.append(f"run.teacher_cache={os.fspath(out)}")
    cfg = load_train_config(config, overrides)
    return build_teacher_cache(cfg, features, force, echo)
