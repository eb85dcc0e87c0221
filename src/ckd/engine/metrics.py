"""Per-epoch metrics: a JSONL file (one object per epoch) and, optionally, TensorBoard."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends one JSON object per epoch to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

    On resume, rows of epochs after the resumed one (written by the interrupted run after its
    last checkpoint) are dropped so the file reads as one uninterrupted run. ``step_key`` names
    the row's position (``epoch``; ``iter`` for iteration-based runs such as detection). A log
    that is not ``enabled`` (ranks other than 0) writes nothing.
    """

    def __init__(
        self,
        out_dir: Path,
        tensorboard: bool,
        resume_epoch: int | None = None,
        enabled: bool = True,
        step_key: str = "epoch",
    ) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.enabled, self.step_key = enabled, step_key
        self.writer = None
        if not enabled:
            return
        if resume_epoch is not None and self.path.exists():
            rows = [r for r in read_metrics(self.path) if r.get(step_key, 0) <= resume_epoch]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but keep training without it
                warnings.warn(
                    "tensorboard is not installed; logging to metrics.jsonl only", stacklevel=2
                )

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            step = row[self.step_key]
            for key, value in row.items():
                if key != self.step_key and isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file (a run folder is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
