"""The runtime of a run: where and how it computes, decided once at start-up.

A :class:`Runtime` holds this process's place in a distributed run, the device, the autocast
precision, the memory layout and the compile setting; the trainer and the tasks ask it instead
of reading ``run.*`` settings.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ckd.config import RunConfig
from ckd.engine.distributed import DistContext, check_split, init_distributed, main_only
from ckd.errors import ConfigError, show
from ckd.methods.distiller import Distiller


def pick_device(name: str, key: str = "run.device") -> torch.device:
    """``auto`` -> CUDA when present, else CPU. An unknown or unavailable device is a
    ConfigError naming the setting ``key``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{key}: unknown device {show(name)}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {name!r} requested but CUDA is not available")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"{key}: {name!r} but only {torch.cuda.device_count()} CUDA device(s)"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}: 'mps' requested but it is not available")
    return device


#: /proc/cpuinfo flags of x86 instructions that compute in bf16 natively: AVX512-BF16 (Intel
#: Cooper Lake and later, AMD Zen 4 and later) and AMX-BF16 (Intel Sapphire Rapids and later).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The instruction-set flags of this machine's CPU (the ``flags`` line of
    ``/proc/cpuinfo``, or of ``cpuinfo`` when given); empty where there is no such file."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def _machine_flags() -> frozenset[str]:
    return cpu_flags()


def native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16, :data:`BF16_FLAGS`),
    read from ``flags``, else from the environment variable ``CKD_CPU_BF16`` (``1`` or ``0``)
    when it is set, else from this machine's ``/proc/cpuinfo``. Without those instructions
    (AVX2-only CPUs) oneDNN emulates bf16 and autocast is many times slower than fp32; without
    ``/proc/cpuinfo`` (not Linux) the answer is no."""
    if flags is None:
        forced = os.environ.get("CKD_CPU_BF16", "").strip()
        if forced in ("0", "1"):
            return forced == "1"
        flags = _machine_flags()
    return bool(BF16_FLAGS & frozenset(flags))


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``run.amp`` on ``device`` (None: full precision). ``auto``:
    bf16 on CUDA devices that support it and on CPUs with native bf16 (:func:`native_bf16`),
    full precision elsewhere."""
    if mode == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and native_bf16():
            return torch.bfloat16
        return None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def cuda_graphs_enabled(
    setting: bool | str, device: torch.device, distributed: bool, obstacle: str | None
) -> bool:
    """``run.cuda_graphs`` for this run: ``auto`` is on where the step can be captured
    (``obstacle`` is None: see :func:`ckd.engine.graphs.graph_obstacle`, a CUDA device, one
    process), ``true`` is on there and a ConfigError elsewhere (the config's own obstacle named
    first: it holds on every machine)."""
    if obstacle is not None:
        pass
    elif device.type != "cuda":
        obstacle = f"it needs a CUDA device; this run is on {device.type}"
    elif distributed:
        obstacle = "several processes (torchrun) are not graphed; run one process per run"
    if obstacle is None:
        return setting is not False
    if setting is True:
        raise ConfigError(f"run.cuda_graphs=true: {obstacle}; set run.cuda_graphs=false")
    return False


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
    compile: bool | str  # run.compile: False, True, "teacher", "reduce-overhead"
    sync_bn: bool = False
    cuda_graphs: bool = False  # the training step captured as a CUDA graph (engine/graphs.py)
    amp_setting: str = "none"  # run.amp as the config says it (the reason for ``amp``)
    layout_setting: bool | str = False  # run.channels_last as the config says it

    @classmethod
    def start(
        cls, run: RunConfig, batch_size: int, accum_steps: int, graph_obstacle: str | None = None
    ) -> Runtime:
        """Join the process group when ``torchrun`` started this process, and pick the device,
        precision and graphs for the ``run`` section (``graph_obstacle``: why the config's
        step cannot be a CUDA graph on any machine, None when it can)."""
        ctx, device_name = init_distributed(run.dist_backend, run.device)
        check_split(batch_size, ctx, accum_steps)
        device = pick_device(device_name)
        if run.sync_bn and ctx.distributed and device.type != "cuda":
            raise ConfigError(
                f"run.sync_bn=true needs CUDA devices (SyncBatchNorm does not run on "
                f"{device.type}); set run.sync_bn=false"
            )
        graphs = cuda_graphs_enabled(run.cuda_graphs, device, ctx.distributed, graph_obstacle)
        if run.compile == "reduce-overhead" and device.type != "cuda":
            raise ConfigError(
                "run.compile=reduce-overhead is torch.compile's CUDA graphs: it needs a CUDA "
                f"device; this run is on {device.type} (use run.compile=true)"
            )
        return cls(
            ctx,
            device,
            amp_dtype(run.amp, device),
            channels_last_enabled(run.channels_last, device),
            run.compile,
            run.sync_bn and ctx.distributed,
            graphs,
            run.amp,
            run.channels_last,
        )

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, cache: bool = True) -> contextlib.AbstractContextManager[Any]:
        """The run's autocast (a no-op in full precision); ``cache=False`` inside a captured
        CUDA graph (autocast's cache of cast weights would outlive the capture)."""
        return torch.autocast(
            self.device.type,
            dtype=self.amp or torch.float32,
            enabled=self.amp is not None,
            cache_enabled=cache,
        )

    def optimizer_options(self) -> dict[str, Any]:
        """Extra options of the SGD optimizer: the fused kernel when the step is a CUDA graph
        (it reads a device-tensor learning rate; the default foreach one reads it on the
        host)."""
        return {"fused": True} if self.cuda_graphs else {}

    def echo(self, echo: Callable[[str], None]) -> Callable[[str], None]:
        """``echo`` on rank 0, silence elsewhere."""
        return main_only(self.dist, echo)

    def describe(self) -> str:
        """What the run computes in and why, e.g. ``precision bf16 autocast (run.amp=auto:
        this CPU computes bf16 natively), memory format channels_last (run.channels_last=auto:
        faster on cpu), compiled, DDP gloo x 2 process(es)``."""
        parts = [f"precision {self._precision()}", f"memory format {self._layout()}"]
        compiled = {True: "compiled", "teacher": "teacher compiled"}
        compiled["reduce-overhead"] = "compiled (reduce-overhead: its CUDA graphs)"
        parts += [compiled[self.compile]] if self.compile in compiled else []
        parts += ["the step as one CUDA graph"] if self.cuda_graphs else []
        if self.dist.distributed:
            backend = torch.distributed.get_backend()
            parts.append(f"DDP {backend} x {self.dist.world_size} process(es)")
        return ", ".join(parts)

    def _precision(self) -> str:
        names = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}
        name = "fp32" if self.amp is None else names.get(self.amp, str(self.amp))
        if self.amp_setting != "auto":
            return f"{name} (run.amp={self.amp_setting})"
        where = "GPU" if self.device.type == "cuda" else self.device.type.upper()
        if self.amp is not None:
            why = f"this {where} computes bf16 natively"
        elif self.device.type in ("cuda", "cpu"):
            why = f"this {where} has no native bf16"
        else:
            why = f"no autocast on {self.device.type}"
        return f"{name} (run.amp=auto: {why})"

    def _layout(self) -> str:
        name = "channels_last" if self.channels_last else "contiguous (NCHW)"
        if self.layout_setting == "auto":
            why = f"{'faster' if self.channels_last else 'not faster'} on {self.device.type}"
            return f"{name} (run.channels_last=auto: {why})"
        return f"{name} (run.channels_last={str(self.layout_setting).lower()})"

    def place(self, distiller: Distiller, teacher_compiled: bool) -> None:
        """Move ``distiller`` (student, teacher, methods) to the device and layout, convert
        the student to SyncBatchNorm when asked, compile what ``run.compile`` says
        (``teacher_compiled``: the teacher runs live, so compiling it helps)."""
        if self.sync_bn:
            distiller.student = nn.SyncBatchNorm.convert_sync_batchnorm(distiller.student)
        distiller.to(self.device)
        if self.channels_last:
            distiller.to(memory_format=torch.channels_last)
        graphs = self.compile == "reduce-overhead"
        if self.compile is True or graphs:
            distiller.student.compile(**({"mode": "reduce-overhead"} if graphs else {}))
        teacher = distiller.teacher
        if self.compile is not False and teacher_compiled and teacher is not None:
            # frozen: weights become constants (BN folded); torch.compile takes a mode or
            # options, so reduce-overhead's CUDA graphs are asked for as an option
            teacher.compile(
                options={"freezing": True, **({"triton.cudagraphs": True} if graphs else {})}
            )

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
