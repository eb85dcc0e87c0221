"""A run's folder: what a fresh or a resumed run may find there, and the files it writes.

``config.yaml`` (the run's config), ``metrics.jsonl`` (:mod:`ckd.engine.metrics`),
``tensorboard/``, ``last.pt`` and ``best.pt`` (checkpoints) and, once finished,
``result.json``; every file but the metrics log is replaced atomically
(:func:`~ckd.engine.checkpoint.write_atomic`), and ``.ckd.lock`` holds the lock
(:mod:`ckd.engine.lock`) that keeps a second process out while a run uses the folder.

A fresh run needs an absent or empty folder; a folder holding a ckd run is continued with
``--resume``, which needs ``last.pt`` (or, for a run stopped before its first checkpoint,
``config.yaml``) and a config that describes the same run: the saved config is parsed with
today's schema (so settings added since take their defaults, and moved keys their new place)
and compared with the given one, setting by setting. Anything else is refused before anything
is written.

At a checkpoint the metrics row is written first, then ``last.pt`` (which records whether it
is the best), then ``best.pt``, then (at the end) ``result.json``, so a process killed at any
instant leaves a folder that ``--resume`` completes: rows past ``last.pt`` are dropped and
retrained, a ``best.pt`` that missed ``last.pt``'s step is copied from it, and a missing
``result.json`` is derived from ``last.pt`` and its row.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from ckd.config import config_from_dict
from ckd.engine.checkpoint import FORMAT, load_for_resume, serialize, write_atomic
from ckd.engine.lock import LOCK_NAME, FolderLock, pid_alive
from ckd.errors import CheckpointError, ConfigError, RunDirError, show
from ckd.paths import read_small_file
from ckd.safe_yaml import describe_yaml_error, load_yaml
from ckd.schema import flatten

#: Settings that may differ between the run being resumed and the config given to resume it
#: (logging, paths, throughput; the number of processes is not part of the config either).
RESUME_FREE = {
    "run.progress",
    "run.progress_seconds",
    "run.tensorboard",
    "run.out_dir",
    "source",
    "data.num_workers",
    "data.test_batch_size",
    "optim.accum_steps",
    "run.dist_backend",
    "run.eval_teacher",
}
#: What a run folder holds (besides the lock and temporary files of the atomic writes).
RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "result.json", "tensorboard")
#: A temporary file of :func:`~ckd.engine.checkpoint.write_atomic` in a run folder.
TEMP = re.compile(r"\.(config\.yaml|metrics\.jsonl|last\.pt|best\.pt|result\.json)\.(\d+)\.tmp")
#: The entries of a training checkpoint that ``--resume`` restores.
RESUMED = ("model", "method", "optimizer", "scaler", "rng")


def config_difference(started: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The first setting (beyond :data:`RESUME_FREE`) in which config ``now`` differs from the
    config a run was ``started`` with, as a sentence; None when they describe the same run."""
    old, new = flatten(started), flatten(now)
    for key in sorted(set(old) | set(new)):
        if key not in RESUME_FREE and old.get(key) != new.get(key):
            return f"{key} is {new.get(key)!r} but the run was started with {old.get(key)!r}"
    return None


def saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config as today's schema reads it (defaults of later settings filled in,
    moved keys moved), as a plain mapping."""

    return config_from_dict(saved, files=False, saved=True).to_dict()


def read_saved_config(path: Path) -> dict[str, Any]:
    """A run folder's ``config.yaml`` as a mapping, read with the project's safe YAML loader.

    Raises:
        ConfigError: one line, for a file that cannot be read, is damaged or holds no mapping.
    """
    raw = read_small_file(path, "a run's config")
    try:
        text = raw.decode("utf-8")
        data = load_yaml(text, str(path))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (damaged?)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not a run's config{describe_yaml_error(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a run's config (a YAML {type(data).__name__})")
    return data


def holds_run(path: str | Path) -> bool:
    """Whether ``path`` holds a ckd run to continue with ``--resume``."""
    return any((Path(path) / name).is_file() for name in ("last.pt", "config.yaml"))


def folder_problem(path: Path, resume: bool) -> str | None:
    """Why a fresh run (or, with ``resume``, a resumed one) may not use folder ``path``, as the
    rest of a one-line message; None when it may. Reads the folder, writes nothing."""
    if os.path.lexists(path) and not path.is_dir():
        return f"run.out_dir: {show(str(path))} is not a folder"
    try:
        names = set(os.listdir(path)) if path.is_dir() else set()
    except OSError as e:
        return f"run.out_dir: cannot read {show(str(path))} ({e.strerror})"
    ours = sorted(n for n in names if n in RUN_FILES)
    other = sorted(
        n for n in names if n not in RUN_FILES and n != LOCK_NAME and not TEMP.fullmatch(n)
    )
    for orphan in ("best.pt", "result.json"):
        if orphan in names and "last.pt" not in names:
            return (
                f"{path} holds {orphan} but no last.pt (deleted?), so it cannot be continued "
                "or reused; set run.out_dir to a new folder (nothing was overwritten)"
            )
    if resume:
        if not {"last.pt", "config.yaml"} & names and not (LOCK_NAME in names and not other):
            return f"--resume: no run in {path} to continue (no checkpoint last.pt, no config.yaml)"
        return None
    if ours:
        return (
            f"{path} already holds a run; pass --resume to continue it or set run.out_dir to "
            "a new folder (nothing was overwritten)"
        )
    if other:
        more = f" and {len(other) - 3} more" if len(other) > 3 else ""
        listed = ", ".join(show(n, 60) for n in other[:3])
        return (
            f"run.out_dir: {show(str(path))} holds files that are not a ckd run's "
            f"({listed}{more}); a new run needs an absent or empty folder (nothing was written)"
        )
    return None


def stale_temps(folder: Path) -> list[Path]:
    """Temporary files of atomic writes in ``folder`` left by ckd processes that are gone."""
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        m = TEMP.fullmatch(entry.name)
        if m and int(m[2]) != os.getpid() and not pid_alive(int(m[2])) and entry.is_file():
            found.append(entry)
    return found


class RunFolder:
    """The folder of one run. ``main``: this process writes (rank 0 of a distributed run); it
    checks the folder, creates it when absent and locks it before anything else happens, and
    :meth:`close` lets go (removing what it made if the run never started)."""

    def __init__(self, path: str | Path, resume: bool, main: bool = True) -> None:
        self.path, self.main, self.asked = Path(path), main, resume
        self.last, self.best = self.path / "last.pt", self.path / "best.pt"
        # --resume of a folder ckd made (its lock) for a run killed before it wrote config.yaml
        # starts that run from scratch
        self.resume = resume and holds_run(self.path)
        self.lock = FolderLock(self.path)
        self.started = False
        self.last_is_best = False  # last.pt is the best checkpoint too (best.pt must match it)
        self._made: list[Path] = []  # folders this process created, deepest last
        self._lock_was_there = True
        if not main:
            return
        self._check()
        try:
            for folder in (*reversed(self.path.parents), self.path):
                if not folder.exists():
                    try:
                        folder.mkdir()
                    except FileExistsError:  # another process made it just now
                        continue
                    self._made.append(folder)
            self._lock_was_there = self.lock.path.exists()
            self.lock.acquire()
            self._check()  # again: now no other ckd process can change it
            self.resume = resume and holds_run(self.path)
        except OSError as e:
            self.close()
            if isinstance(e, RunDirError):
                raise
            where = e.filename or self.path
            raise RunDirError(f"run.out_dir: cannot use {where} ({e.strerror})") from None
        except BaseException:
            self.close()
            raise
        for temp in stale_temps(self.path):
            temp.unlink(missing_ok=True)

    def _check(self) -> None:
        problem = folder_problem(self.path, self.asked)
        if problem:
            raise RunDirError(problem)

    def hold(self) -> None:
        """Take the lock again after :meth:`close` (a second ``fit`` of one trainer)."""
        if self.main:
            self.lock.acquire()

    def close(self) -> None:
        """Release the lock; if the run never started, remove the lock file and the folders
        this process made, leaving the disk as it was."""
        unused = not self.started
        self.lock.release(remove=unused and not self._lock_was_there)
        if unused:
            for folder in reversed(self._made):
                try:
                    folder.rmdir()
                except OSError:
                    break
            self._made = []

    def checkpoint(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """The checkpoint to resume from (None for a fresh run, or one stopped before its first
        checkpoint), checked to be a ckd training checkpoint of a run with the same ``config``
        (a mapping of today's schema)."""
        if not self.resume:
            return None
        if not self.last.is_file():
            if self.main:  # a run stopped before its first checkpoint: from its beginning
                self._compare(read_saved_config(self.path / "config.yaml"), config)
            return None
        ckpt = load_for_resume(self.last)
        if ckpt.get("format") != FORMAT or "config" not in ckpt:
            raise RunDirError(f"{self.last}: not a ckd training checkpoint")
        missing = [k for k in RESUMED if k not in ckpt]
        if not {"step", "iteration", "epoch"} & set(ckpt):
            missing.append("step")
        if missing:
            raise CheckpointError(
                f"--resume: {self.last} lacks {', '.join(missing)}; not a complete ckd training "
                "checkpoint"
            )
        if not isinstance(ckpt["config"], dict):
            raise CheckpointError(f"--resume: {self.last}: its config is not a mapping")
        self._compare(ckpt["config"], config)
        self.last_is_best = "step" in ckpt and ckpt.get("best_step") == ckpt["step"]
        return ckpt

    @staticmethod
    def _compare(saved: dict[str, Any], config: dict[str, Any]) -> None:
        differs = config_difference(saved_config(saved), config)
        if differs:
            raise ConfigError(f"--resume: {differs}")

    def start(self, config: dict[str, Any]) -> None:
        """The run begins: a fresh run writes ``config.yaml``; a resumed one completes what a
        killed process left (``best.pt`` of ``last.pt``'s step)."""
        self.started = True
        if not self.main:
            return
        if not self.resume:
            write_atomic(
                self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode()
            )
        elif self.last_is_best and not (
            self.best.is_file() and filecmp.cmp(self.last, self.best, shallow=False)
        ):
            write_atomic(self.best, self.last.read_bytes())

    def save(self, ckpt: dict[str, Any], best: bool) -> None:
        """``last.pt``, then ``best.pt`` (the same bytes) when ``best``."""
        if self.main:
            data = serialize(ckpt)
            write_atomic(self.last, data)
            if best:
                write_atomic(self.best, data)

    def result(self) -> dict[str, Any] | None:
        """The finished run's ``result.json``, if any."""
        path = self.path / "result.json"
        if not path.is_file():
            return None
        try:
            result = json.loads(path.read_bytes())
        except (OSError, ValueError) as e:
            raise RunDirError(f"{path}: unreadable or damaged ({show(str(e), 80)})") from None
        if not isinstance(result, dict):
            raise RunDirError(f"{path}: not a run's result")
        return result

    def finish(self, result: dict[str, Any]) -> None:
        if self.main:
            write_atomic(self.path / "result.json", (json.dumps(result, indent=2) + "\n").encode())
