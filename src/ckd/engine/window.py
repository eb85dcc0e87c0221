"""What the trainer keeps between two metric rows: :class:`Window`, the loss terms and the
task's statistics summed on the device (no host sync per step), with the first step at which a
term was not finite, saved in checkpoints so that a resumed run's row is the uninterrupted one;
and :class:`ProgressLines`, a line every ``run.progress_seconds`` when no progress bar is shown."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from ckd.engine.runtime import Runtime


class Window:
    """Per-micro-batch loss terms and task statistics (e.g. training accuracy) summed on the
    device since the last metrics row (no host sync per step), with the samples and time, and
    the first step whose loss terms were not all finite (a device flag, read every
    :data:`CHECK_EVERY` steps)."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, str], torch.Tensor] = {}
        self.count, self.samples, self.start = 0, 0, time.perf_counter()
        self.bad_names: tuple[str, ...] = ()  # the loss terms that ``bad`` follows
        self.bad: torch.Tensor | None = None  # each one's first non-finite step; -1: none

    def add(
        self, terms: dict[str, torch.Tensor], stats: dict[str, torch.Tensor], n: int, step: int = 0
    ) -> None:
        values = {
            **{("term", k): v.detach().float() for k, v in terms.items()},
            **{("stat", k): v.detach().float() for k, v in stats.items()},
        }
        for key, v in values.items():
            self.sums[key] = self.sums[key] + v if key in self.sums else v
        if terms:
            losses = torch.stack([values["term", k].reshape(()) for k in terms])
            self._follow(tuple(terms), losses.device)
            assert self.bad is not None
            broken = ~torch.isfinite(losses) & (self.bad < 0)
            self.bad = torch.where(broken, step, self.bad)
        self.count += 1
        self.samples += n

    def running_loss(self) -> tuple[float, int, float]:
        """(mean summed loss per micro-batch, samples, seconds) of this process since the last
        row, the window left as it is (one host sync: for an occasional progress line)."""
        terms = [v for (kind, _), v in self.sums.items() if kind == "term"]
        loss = float(torch.stack(terms).sum()) / max(self.count, 1) if terms else 0.0
        return loss, self.samples, time.perf_counter() - self.start

    def _follow(self, names: tuple[str, ...], device: torch.device) -> None:
        """Make ``bad`` follow the terms ``names`` (kept on the device: no sync)."""
        if names == self.bad_names:
            return
        old = dict(zip(self.bad_names, self.bad if self.bad is not None else [], strict=True))
        none = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad = torch.stack([old.get(k, none) for k in names])
        self.bad_names = names

    def first_bad(self) -> tuple[int, list[str]]:
        """The first step (0-based) at which a loss term was not finite (-1: none) and the
        terms that were not, then."""
        if self.bad is None:
            return -1, []
        steps = dict(zip(self.bad_names, self.bad.tolist(), strict=True))
        bad = [s for s in steps.values() if s >= 0]
        if not bad:
            return -1, []
        return min(bad), [k for k, s in steps.items() if s == min(bad)]

    def means(self, rt: Runtime) -> tuple[dict[str, float], dict[str, float], float, float]:
        """(terms, statistics): means over every micro-batch of every process; the global
        samples and the seconds; then a fresh window."""
        keys = list(self.sums)
        extra = torch.tensor([float(self.count), float(self.samples)], device=rt.device)
        flat = torch.cat([torch.stack([self.sums[k] for k in keys]), extra]) if keys else extra
        totals: list[float] = rt.dist.all_reduce_sum(flat).tolist()
        count, samples = max(totals[-2], 1.0), totals[-1]
        seconds = time.perf_counter() - self.start
        Window.__init__(self)  # a fresh window
        means = {k: v / count for k, v in zip(keys, totals, strict=False)}
        terms = {name: v for (kind, name), v in means.items() if kind == "term"}
        stats = {name: v for (kind, name), v in means.items() if kind == "stat"}
        return terms, stats, samples, seconds

    def state(self, rt: Runtime) -> dict[str, Any] | None:
        """What a checkpoint between two rows keeps of the window (summed over the processes,
        so rank 0's checkpoint holds it all); None when it is empty."""
        if not self.count:
            return None
        keys = list(self.sums)
        extra = torch.tensor([float(self.count), float(self.samples)], device=rt.device)
        flat = torch.cat([torch.stack([self.sums[k].reshape(()) for k in keys]), extra])
        flat = rt.dist.all_reduce_sum(flat) if rt.dist.distributed else flat
        return {
            "keys": [f"{kind}:{name}" for kind, name in keys],
            "sums": flat[: len(keys)].cpu(),
            "count": int(flat[-2].item()),
            "samples": int(flat[-1].item()),
            "seconds": time.perf_counter() - self.start,
        }

    @classmethod
    def restore(cls, state: dict[str, Any] | None, device: torch.device) -> Window:
        """A window that continues the one :meth:`state` saved (a fresh one for None)."""
        window = cls()
        if state:
            sums = state["sums"].to(device)
            for i, key in enumerate(state["keys"]):
                kind, name = key.split(":", 1)
                window.sums[kind, name] = sums[i]
            window.count, window.samples = int(state["count"]), int(state["samples"])
            window.start -= float(state["seconds"])
        return window


class ProgressLines:
    """Progress between the metric rows when no bar is shown (output to a file or a pipe): a
    line every ``seconds`` (``run.progress_seconds``) with the position and the running loss,
    checked against the clock each step (no host sync: the loss is read only when a line is
    due)."""

    def __init__(
        self,
        seconds: float,
        enabled: bool,
        position: Callable[[int], str],
        world_size: int,
        echo: Callable[[str], None],
    ) -> None:
        self.seconds = seconds
        self.enabled = enabled and seconds > 0
        self.position, self.world_size, self.echo = position, world_size, echo
        self.reset()

    def reset(self) -> None:
        """A line was just printed: the next is due ``seconds`` from now."""
        self.due = time.monotonic() + self.seconds

    def tick(self, step: int, window: Window) -> None:
        """``step`` steps are done: print a line when one is due (``position(step)`` says where,
        e.g. ``epoch 2/10, step 5/40``)."""
        if not self.enabled or time.monotonic() < self.due:
            return
        self.reset()
        loss, samples, seconds = window.running_loss()
        rate = samples * self.world_size / max(seconds, 1e-9)
        self.echo(f"  {self.position(step)}: loss {loss:.4f} since the last row, {rate:.0f} img/s")
