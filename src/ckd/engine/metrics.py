"""Metrics rows: a JSONL file (one object per row) and, optionally, TensorBoard.

A row is appended (and, before a checkpoint, fsynced) before the checkpoint of its step is
written, so every step a checkpoint has reached has its row. On resume, rows past the
checkpoint (an interrupted process's) are dropped by an atomic rewrite, and a torn last line
(a power cut in the middle of an append) is dropped with them; :func:`read_metrics` skips such
a line too.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import ckd.faults as faults
from ckd.engine.checkpoint import write_atomic
from ckd.errors import DataError


class MetricsLog:
    """Appends one JSON object per row to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

    ``resume_step``: the step a resumed run continues from; rows of later steps are dropped so
    the file reads as one uninterrupted run. A row's step is its ``step`` (``iter`` for
    iteration schedules; ``step_key`` x ``unit`` steps for rows of earlier releases).
    ``step_key`` names the row's position for TensorBoard (``epoch``; ``iter`` for iteration
    schedules such as detection). A log that is not ``enabled`` (ranks other than 0) writes
    nothing (it reads the kept rows, as rank 0 does).
    """

    def __init__(
        self,
        out_dir: Path,
        tensorboard: bool,
        resume_step: int | None = None,
        enabled: bool = True,
        step_key: str = "epoch",
        unit: int = 1,
    ) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.enabled, self.step_key, self.unit = enabled, step_key, unit
        self.rows: list[dict[str, Any]] = []  # the rows kept on resume
        self.writer = None
        if resume_step is not None and self.path.exists():  # every rank reads (row_at)
            rows, torn = _read(self.path)
            self.rows = [r for r in rows if self.step_of(r) <= resume_step]
            if enabled and (torn or len(self.rows) < len(rows)):
                text = "".join(json.dumps(r) + "\n" for r in self.rows)
                write_atomic(self.path, text.encode())
        if not enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but keep training without it
                warnings.warn(
                    "tensorboard is not installed; logging to metrics.jsonl only", stacklevel=2
                )

    def step_of(self, row: dict[str, Any]) -> float:
        """The optimisation step a row was written at."""
        step: float
        if "step" in row:
            step = row["step"]
        elif "iter" in row:
            step = row["iter"]
        else:
            step = row.get(self.step_key, 0) * self.unit
        return step

    def row_at(self, step: int) -> dict[str, Any] | None:
        """The kept row of ``step`` (after a resume), if any."""
        return next((r for r in reversed(self.rows) if self.step_of(r) == step), None)

    def log(self, row: dict[str, Any], sync: bool = False) -> None:
        """Append ``row`` (``sync``: on disk before this returns, e.g. before a checkpoint)."""
        if not self.enabled:
            return
        faults.point("before:row")
        line = json.dumps(row) + "\n"
        with open(self.path, "a") as f:
            if faults.due("torn:row"):  # half a row on disk, then the power cut
                f.write(line[: len(line) // 2])
                f.flush()
                os.fsync(f.fileno())
                faults.strike()
            f.write(line)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        faults.point("after:row")
        if self.writer is not None:
            step = row[self.step_key]
            for key, value in row.items():
                if key != self.step_key and isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _read(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The rows of a ``metrics.jsonl`` file and whether its last line was torn (not a whole
    JSON object: dropped). A damaged line before the last is a DataError."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror})") from None
    lines = text.split("\n")
    rows, torn = [], not text.endswith("\n") and text != ""
    last = max((n for n, line in enumerate(lines, 1) if line.strip()), default=0)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            if number == last:  # a torn append
                torn = True
                continue
            raise DataError(f"{path}: line {number} is not a metrics row (damaged?)")
        rows.append(row)
    return rows, torn


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file (a run folder is accepted too); a torn last line
    is left out."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return _read(path)[0]
