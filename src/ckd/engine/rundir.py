"""A run's folder: what a fresh or a resumed run may find there, and the files it writes.

``config.yaml`` (the run's config), ``metrics.jsonl`` (:mod:`ckd.engine.metrics`),
``tensorboard/``, ``last.pt`` and ``best.pt`` (checkpoints, written atomically) and, once
finished, ``result.json``. A fresh run never writes into a folder that holds a run; ``--resume``
needs ``last.pt`` and a config that describes the same run: the saved config is parsed with
today's schema (so settings added since take their defaults, and moved keys their new place)
and compared with the given one, setting by setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ckd.engine.checkpoint import FORMAT, load_for_resume, save_atomic
from ckd.errors import ConfigError, RunDirError
from ckd.schema import flatten

#: Settings that may differ between the run being resumed and the config given to resume it
#: (logging, paths, throughput; the number of processes is not part of the config either).
RESUME_FREE = {
    "run.progress",
    "run.tensorboard",
    "run.out_dir",
    "source",
    "data.num_workers",
    "data.test_batch_size",
    "optim.accum_steps",
    "run.dist_backend",
    "run.eval_teacher",
}


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
    from ckd.config import config_from_dict

    return config_from_dict(saved, files=False, saved=True).to_dict()


class RunFolder:
    """The folder of one run. ``main``: this process writes (rank 0 of a distributed run)."""

    def __init__(self, path: str | Path, resume: bool, main: bool = True) -> None:
        self.path, self.resume, self.main = Path(path), resume, main
        self.last, self.best = self.path / "last.pt", self.path / "best.pt"
        if resume and not self.last.is_file():
            raise RunDirError(f"--resume: no checkpoint {self.last} to resume from")
        if not resume and (self.last.exists() or (self.path / "result.json").exists()):
            raise RunDirError(
                f"{self.path} already holds a run; pass --resume to continue it or set "
                "run.out_dir to a new folder (nothing was overwritten)"
            )

    def checkpoint(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """The checkpoint to resume from (None for a fresh run), checked to be a ckd training
        checkpoint of a run with the same ``config`` (a mapping of today's schema)."""
        if not self.resume:
            return None
        ckpt = load_for_resume(self.last)
        if ckpt.get("format") != FORMAT or "config" not in ckpt:
            raise RunDirError(f"{self.last}: not a ckd training checkpoint")
        differs = config_difference(saved_config(ckpt["config"]), config)
        if differs:
            raise ConfigError(f"--resume: {differs}")
        return ckpt

    def start(self, config: dict[str, Any]) -> None:
        """Make the folder and, for a fresh run, write ``config.yaml``."""
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.resume:
            (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def save(self, ckpt: dict[str, Any], best: bool) -> None:
        """``last.pt`` (and ``best.pt`` when ``best``)."""
        if self.main:
            save_atomic(ckpt, self.last)
            if best:
                save_atomic(ckpt, self.best)

    def result(self) -> dict[str, Any] | None:
        """The finished run's ``result.json``, if any."""
        path = self.path / "result.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def finish(self, result: dict[str, Any]) -> None:
        if self.main:
            (self.path / "result.json").write_text(json.dumps(result, indent=2) + "\n")
