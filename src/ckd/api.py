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
the command line prints (:class:`~ckd.errors.ConfigError`, ``FileNotFoundError``, ...), with
the options named as this API spells them (``resume=True``, not ``--resume``). The functions'
own arguments are checked first: a value of the wrong type or out of range is a
:class:`~ckd.errors.ConfigError` naming the argument.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from ckd.errors import USER_ERRORS, ConfigError, show
from ckd.paths import output_path
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
    _check_config(config, "config")
    overrides = _check_overrides(overrides)
    _check_bool(resume, "resume")
    _check_count(stop_after, "stop_after")
    _check_bool(quiet, "quiet")
    _check_callable(echo, "echo")
    say = (lambda _line: None) if quiet else (echo or functools.partial(print, flush=True))
    with _in_api_terms():
        return run_train(config, overrides, resume=resume, stop_after=stop_after, echo=say)


def run_train(
    config: ConfigSource,
    overrides: Sequence[str] | str = (),
    *,
    resume: bool = False,
    stop_after: int | None = None,
    echo: Callable[[str], None] = print,
) -> Run:
    """What ``ckd train`` runs (:func:`train` with the command line's argument checks and
    terms: its errors name ``--resume``, ``--stop-after``)."""
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after must be >= 1 (epochs, or iterations); got {stop_after}")
    cfg = load_train_config(config, overrides)
    try:
        trainer = Trainer(cfg, resume=resume, echo=echo)
        result = trainer.fit(stop_after=stop_after)
    finally:
        shutdown()  # leave the process group of a torchrun launch (no-op otherwise)
    kept = None if cfg.task == "classification" else trainer.distiller.student.eval()
    return Run(cfg, trainer.out_dir, result, trainer.runtime.is_main, kept)


def load_student(source: str | os.PathLike[str]) -> nn.Module:
    """The trained student of a run folder (its ``last.pt``) or of a checkpoint of a run, in
    eval mode on the CPU, with its input-normalisation wrapper (see :attr:`Run.student`)."""
    _check_path(source, "source")
    with _in_api_terms():
        return load(source).model


def evaluate(
    source: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    full_test: bool = False,
    subset: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    amp: str | None = None,
) -> dict[str, Any]:
    """Top-1 / top-5 (%) and mean loss of a run's checkpoint, as ``ckd eval`` measures them.

    The test set is the run's own (its ``data.test_subset``, drawn with its seed, as the run
    reported on), ``full_test`` the whole test split, ``subset`` a class-balanced subset of
    that many images. The precision is the run's own (its ``run.amp`` resolved on this
    machine, as the run evaluated itself) unless ``amp`` (``auto``, ``none``, ``bf16``,
    ``fp16``) says otherwise. Returns ``{"top1", "top5", "loss", "n", "test_set",
    "precision"}`` (``test_set``, ``precision``: which set and precision, in words).
    """
    _check_path(source, "source")
    _check_path(data_root, "data_root", none=True)
    _check_bool(full_test, "full_test")
    _check_count(subset, "subset")
    _check_count(batch_size, "batch_size", none=False)
    _check_str(device, "device")
    _check_str(amp, "amp", none=True)
    with _in_api_terms():
        found, metrics = evaluate_checkpoint(
            source,
            data_root=None if data_root is None else os.fspath(data_root),
            test_subset=subset,
            full_test=full_test,
            batch_size=batch_size,
            device=device,
            amp=amp,
        )
    return {**metrics, "test_set": in_api_terms(found.test_set)}


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
    set to it; ``features``: also the teacher's features; ``force``: replace a cache ckd made
    that is in the folder. Returns the line that says what was done."""
    _check_config(config, "config")
    overrides = _check_overrides(overrides)
    _check_path(out, "out", none=True)
    _check_bool(features, "features")
    _check_bool(force, "force")
    _check_callable(echo, "echo", none=False)
    with _in_api_terms():
        return run_cache_build(config, overrides, out, features, force, echo)


def run_cache_build(
    config: ConfigSource,
    overrides: Sequence[str] | str,
    out: str | os.PathLike[str] | None,
    features: bool,
    force: bool,
    echo: Callable[[str], None],
) -> str:
    """What ``ckd cache build`` runs (:func:`build_cache` in the command line's terms)."""
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    overrides.append("data.loader=fast")
    if out is not None:
        # quoted: a path is a string, whatever YAML would make of its characters
        overrides.append(f"run.teacher_cache={json.dumps(str(output_path(out, '--out')))}")
    cfg = load_train_config(config, overrides)
    return build_teacher_cache(cfg, features, force, echo)


# ---------------------------------------------------------------- the API's own arguments
#: The command line's options in the messages of the layers below, as this API names them.
API_TERMS = {
    "--resume": "resume=True",
    "--stop-after": "stop_after",
    "--out": "out",
    "--force": "force=True",
    "--features": "features=True",
    "--subset": "subset",
    "--full-test": "full_test=True",
    "--batch-size": "batch_size",
    "--data-root": "data_root",
    "--device": "device",
    "--amp": "amp",
}
_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def in_api_terms(text: str) -> str:
    """``text`` with the command line's options named as this API spells them (``--resume``
    -> ``resume=True``); a command quoted in backticks stays as it is."""
    parts = re.split(r"(`[^`]*`)", text)
    for i in range(0, len(parts), 2):  # outside the backticks
        parts[i] = _OPTION.sub(lambda m: API_TERMS.get(m[0], m[0]), parts[i])
    return "".join(parts)


@contextlib.contextmanager
def _in_api_terms() -> Iterator[None]:
    """A bad-input error raised in the block says :func:`in_api_terms` what it said."""
    try:
        yield
    except USER_ERRORS as e:
        if len(e.args) == 1 and isinstance(e.args[0], str):
            e.args = (in_api_terms(e.args[0]),)
        raise


def _bad(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{name}={show(value, 80)}: {allowed}")


def _check_path(value: Any, name: str, none: bool = False) -> None:
    if value is None and none:
        return
    if not isinstance(value, str | os.PathLike) or isinstance(value, bytes):
        raise _bad(name, value, "expected a path (str or os.PathLike)" + (" or None" * none))
    text = os.fspath(value)
    if not isinstance(text, str):  # an os.PathLike of bytes
        raise _bad(name, value, "expected a path of text, not bytes")
    if not text.strip() or "\0" in text:
        raise _bad(name, value, "expected a path (not empty, no NUL character)")


def _check_config(value: Any, name: str) -> None:
    if isinstance(value, Mapping):
        return
    if not isinstance(value, str | os.PathLike) or isinstance(value, bytes):
        raise _bad(
            name,
            value,
            "expected a YAML file, a shipped config's name, a run folder "
            "or a mapping of the config's sections",
        )
    _check_path(value, name)


def _check_overrides(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence | set) or isinstance(items, bytes | bytearray):
        raise _bad("overrides", value, 'expected "key.path=value" strings (a list, or one)')
    items = list(items)
    for item in items:
        if not isinstance(item, str):
            raise _bad("overrides", value, f'expected "key.path=value" strings; got {show(item)}')
    return items


def _check_bool(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise _bad(name, value, "expected True or False")


def _check_count(value: Any, name: str, none: bool = True) -> None:
    if value is None and none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _bad(name, value, "expected an integer >= 1" + (" or None" * none))


def _check_str(value: Any, name: str, none: bool = False) -> None:
    if value is None and none:
        return
    if not isinstance(value, str):
        raise _bad(name, value, "expected a string" + (" or None" * none))


def _check_callable(value: Any, name: str, none: bool = True) -> None:
    if value is None and none:
        return
    if not callable(value):
        raise _bad(name, value, "expected a function taking one line (str)")
