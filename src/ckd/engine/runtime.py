"""The runtime of a run: where and how it computes, decided once at start-up.

A :class:`Runtime` holds this process's place in a distributed run, the device, the autocast
precision, the memory layout and the compile setting; the trainer and the tasks ask it instead
of reading ``run.*`` settings.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ckd.engine.distributed import DistContext, check_split, init_distributed, main_only
from ckd.errors import ConfigError


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU. An unavailable device is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device: {name!r} requested but CUDA is not available")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"run.device: {name!r} but only {torch.cuda.device_count()} CUDA device(s)"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("run.device: 'mps' requested but it is not available")
    return torch.device(name)


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``run.amp`` on ``device`` (None: full precision)."""
    if mode == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def channels_last_enabled(setting: bool | str, device: torch.device) -> bool:
    """``run.channels_last``: ``auto`` is on for CUDA and the CPU (oneDNN), where it is faster
    (benchmarks/README.md), and off elsewhere."""
    if setting == "auto":
        return device.type in ("cuda", "cpu")
    return bool(setting)


@dataclass
class Runtime:
    dist: DistContext
    device: torch.device
    amp: torch.dtype | None  # autocast dtype (None: full precision)
    channels_last: bool
    compile: bool | str  # run.compile: False, True, "teacher"
    sync_bn: bool = False

    @classmethod
    def start(cls, run: Any, batch_size: int, accum_steps: int) -> Runtime:
        """Join the process group when ``torchrun`` started this process, and pick the device
        and precision for the ``run`` section."""
        ctx, device_name = init_distributed(run.dist_backend, run.device)
        check_split(batch_size, ctx, accum_steps)
        device = pick_device(device_name)
        if run.sync_bn and ctx.distributed and device.type != "cuda":
            raise ConfigError(
                f"run.sync_bn=true needs CUDA devices (SyncBatchNorm does not run on "
                f"{device.type}); set run.sync_bn=false"
            )
        return cls(
            ctx,
            device,
            amp_dtype(run.amp, device),
            channels_last_enabled(run.channels_last, device),
            run.compile,
            run.sync_bn and ctx.distributed,
        )

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The run's autocast (a no-op in full precision)."""
        return torch.autocast(
            self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
        )

    def echo(self, echo: Callable[[str], None]) -> Callable[[str], None]:
        """``echo`` on rank 0, silence elsewhere."""
        return main_only(self.dist, echo)

    def describe(self) -> str:
        """``bf16, channels_last, compiled, DDP gloo x 2`` and the like."""
        parts = [str(self.amp).replace("torch.", "") if self.amp else "fp32"]
        parts.append("channels_last" if self.channels_last else "contiguous")
        parts += {True: ["compiled"], "teacher": ["teacher compiled"]}.get(self.compile, [])
        if self.dist.distributed:
            backend = torch.distributed.get_backend()
            parts.append(f"DDP {backend} x {self.dist.world_size} process(es)")
        return ", ".join(parts)

    def place(self, distiller: nn.Module, teacher_compiled: bool) -> None:
        """Move ``distiller`` (student, teacher, methods) to the device and layout, convert
        the student to SyncBatchNorm when asked, compile what ``run.compile`` says
        (``teacher_compiled``: the teacher runs live, so compiling it helps)."""
        if self.sync_bn:
            distiller.student = nn.SyncBatchNorm.convert_sync_batchnorm(distiller.student)
        distiller.to(self.device)
        if self.channels_last:
            distiller.to(memory_format=torch.channels_last)
        if self.compile is True:
            distiller.student.compile()
        teacher = getattr(distiller, "teacher", None)
        if self.compile is not False and teacher_compiled and teacher is not None:
            teacher.compile(options={"freezing": True})  # frozen: weights become constants

    def wrap(self, module: nn.Module) -> DDP | None:
        """``module`` in DistributedDataParallel under torchrun (broadcasting rank 0's weights
        and buffers to every rank), else None."""
        if not self.dist.distributed:
            return None
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(module, device_ids=ids)

    @functools.cached_property
    def is_main(self) -> bool:
        return self.dist.is_main
