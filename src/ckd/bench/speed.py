"""``ckd bench speed``: images/s of a distillation step, the input paths side by side.

Each variant is a real :class:`~ckd.engine.Trainer` on a generated CIFAR-format dataset (the
standard path reads it through torchvision's CIFAR class and PIL transforms, exactly as for the
real data) with a randomly initialised teacher (speed does not depend on the weights):

- **(a) standard**: torchvision PIL transforms in DataLoader workers, fp32, contiguous layout,
  the teacher run on every step (the reference code base's pipeline);
- **(b) fast**: ``data.loader=fast`` with the device's default precision and layout
  (``run.amp=auto``, ``run.channels_last=auto``), the teacher under ``inference_mode``;
- **(c) fast + cache**: (b) with ``run.teacher_cache`` (built once before timing; its build
  time is reported apart);
- **(b+)**, **(c+)**: (b) and (c) with ``run.compile=true`` (``torch.compile`` of the student
  and, without a cache, of the frozen teacher for inference; compiled during the first round's
  warm-up steps, so the compile time is not in the figures).

The variants are timed in rounds: in each round every variant runs ``warmup`` untimed steps
then ``steps`` timed steps of a new epoch, one variant after the other, so that a slow spell of
a noisy machine hits all of them alike; the figures are medians over rounds, and the ratios
medians of the per-round ratios. Peak memory is measured in a fresh process per variant.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ckd.config import config_from_dict
from ckd.data import make_fake_cifar
from ckd.models import create_model

PATHS = {
    "standard": "(a) standard",
    "fast": "(b) fast",
    "fast-compiled": "(b+) fast, compiled",
    "cache": "(c) fast + cache",
    "cache-compiled": "(c+) fast + cache, compiled",
}
METHOD_LABELS = {"ckd": "CKD", "kd": "KD", "dkd": "DKD", "crd": "CRD", "vanilla": "CE only"}
#: (path, method) pairs measured by default: the three paths on CKD, then KD and CE alone.
DEFAULT_VARIANTS = (
    ("standard", "ckd"),
    ("fast", "ckd"),
    ("fast-compiled", "ckd"),
    ("cache", "ckd"),
    ("cache-compiled", "ckd"),
    ("fast", "kd"),
    ("cache", "kd"),
    ("fast", "vanilla"),
)


@dataclass
class BenchSpec:
    teacher: str = "resnet56"
    student: str = "resnet20"
    batch_size: int = 64
    steps: int = 15
    warmup: int = 3
    rounds: int = 3
    num_classes: int = 100
    num_workers: int = 2
    device: str = "auto"
    threads: int | None = None  # torch threads (None: torch's default)
    n_train: int | None = None  # default: enough for warmup + steps batches

    def train_size(self) -> int:
        return self.n_train or self.batch_size * (self.warmup + self.steps)


def machine() -> dict[str, Any]:
    """The machine the figures come from."""
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    with contextlib.suppress(OSError):
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return info


def prepare(folder: Path, spec: BenchSpec) -> tuple[Path, Path]:
    """A generated CIFAR folder and a random teacher checkpoint in ``folder``."""
    data = make_fake_cifar(
        folder / "data",
        num_classes=spec.num_classes,
        n_train=spec.train_size(),
        n_test=spec.batch_size,
        seed=0,
    )
    torch.manual_seed(0)
    teacher = create_model(spec.teacher, num_classes=spec.num_classes)
    path = folder / "teacher.pt"
    torch.save({"model": teacher.state_dict()}, path)
    return data, path


def variant_config(
    spec: BenchSpec, folder: Path, data: Path, teacher: Path, path: str, method: str, epochs: int
) -> dict[str, Any]:
    """The config of one variant (see the module doc)."""
    fast = path != "standard"
    cfg: dict[str, Any] = {
        "data": {
            "name": "cifar10" if spec.num_classes == 10 else "cifar100",
            "root": str(data),
            "batch_size": spec.batch_size,
            "test_batch_size": spec.batch_size,
            "num_workers": spec.num_workers,
            "loader": "fast" if fast else "standard",
        },
        "student": {"name": spec.student},
        "method": {"name": method},
        "optim": {"epochs": epochs, "lr": 0.05, "schedule": "cosine"},
        "run": {
            "seed": 0,
            "device": spec.device,
            "amp": "auto" if fast else "none",
            "channels_last": "auto" if fast else False,
            "compile": path.endswith("-compiled"),
            "teacher_cache": str(folder / "cache") if path.startswith("cache") else None,
            "out_dir": str(folder / f"run-{path}-{method}"),
            "tensorboard": False,
            "progress": False,
        },
    }
    if method != "vanilla":
        cfg["teacher"] = {"name": spec.teacher, "checkpoint": str(teacher)}
    return cfg


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Where a step's time goes: input, teacher outputs (live or cached), student forward, loss
    (the rest of the forward) and backward + optimizer. Hooks on the trainer's student and
    teacher and wrappers around its teacher source and ``forward_train``; it synchronises CUDA
    at each boundary, so use it for a breakdown, not for throughput."""

    PARTS = ("input", "teacher", "student forward", "loss", "backward + optimizer")

    def __init__(self, trainer: Any) -> None:
        self.trainer, self.device = trainer, trainer.runtime.device
        self.totals = dict.fromkeys(self.PARTS, 0.0)
        self._start: dict[str, float] = {}
        self._in_source = False
        d = trainer.distiller
        self._handles = [
            d.student.register_forward_pre_hook(self._enter("student forward")),
            d.student.register_forward_hook(self._leave("student forward")),
        ]
        if d.teacher is not None:
            self._handles += [
                d.teacher.register_forward_pre_hook(self._enter("teacher")),
                d.teacher.register_forward_hook(self._leave("teacher")),
            ]
        self._forward_train = d.forward_train
        d.forward_train = self._timed_forward  # an instance attribute: close() removes it

    def now(self) -> float:
        _sync(self.device)
        return time.perf_counter()

    def inner(self) -> float:
        return sum(self.totals[p] for p in ("teacher", "student forward", "loss"))

    def _enter(self, part: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            if not (part == "teacher" and self._in_source):
                self._start[part] = self.now()

        return hook

    def _leave(self, part: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            if part in self._start:
                self.totals[part] += self.now() - self._start.pop(part)

        return hook

    def _timed_forward(self, *args: Any, **kw: Any) -> Any:
        source = kw.get("teacher")
        if callable(source):  # fast path: time the teacher source (live or cached) as a whole
            kw["teacher"] = functools.partial(self._timed_source, source)
        before = self.totals["teacher"] + self.totals["student forward"]
        start = self.now()
        out = self._forward_train(*args, **kw)
        inside = self.totals["teacher"] + self.totals["student forward"] - before
        self.totals["loss"] += self.now() - start - inside
        return out

    def _timed_source(self, source: Callable[[], Any]) -> Any:
        start, self._in_source = self.now(), True
        try:
            return source()
        finally:
            self._in_source = False
            self.totals["teacher"] += self.now() - start

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        del self.trainer.distiller.forward_train


def timed_steps(trainer: Any, epoch: int) -> Iterator[float]:
    """The steps of ``epoch`` one at a time: yields the seconds each took (batch included)."""
    iters, batches = trainer.task.loader.steps_per_epoch, trainer.task.loader.epoch(epoch)
    trainer.distiller.train()
    lr = trainer.cfg.optim.lr
    it: Iterator = iter(batches)
    try:
        for i in range(iters):
            start = time.perf_counter()
            trainer.train_step(next(it), epoch, epoch * iters + i, lr)
            _sync(trainer.runtime.device)
            yield time.perf_counter() - start
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def interleaved_ratio(a: Any, b: Any, epochs: range, warmup: int, steps: int) -> float:
    """Median over steps of (step time of ``a``) / (step time of ``b``), the two trainers
    taking turns step by step (order alternating): a fine-grained comparison on a noisy
    machine."""
    ratios = []
    for epoch in epochs:
        ga, gb = timed_steps(a, epoch), timed_steps(b, epoch)
        try:
            for _ in range(warmup):
                next(ga), next(gb)
            for i in range(steps):
                if i % 2:
                    tb, ta = next(gb), next(ga)
                else:
                    ta, tb = next(ga), next(gb)
                ratios.append(ta / tb)
        finally:
            ga.close()
            gb.close()
    return statistics.median(ratios)


def run_steps(
    trainer: Any,
    epoch: int,
    warmup: int,
    steps: int,
    timer: StepTimer | None = None,
    before_close: Callable[[], None] | None = None,
) -> float:
    """Run ``warmup`` then ``steps`` training steps of ``epoch``; seconds the timed ones took.
    ``before_close`` is called after the steps, while the epoch's loader is still open."""
    iters, batches = trainer.task.loader.steps_per_epoch, trainer.task.loader.epoch(epoch)
    if warmup + steps > iters:
        raise ValueError(f"{warmup} + {steps} steps asked, the epoch has {iters}")
    trainer.distiller.train()
    lr = trainer.cfg.optim.lr
    it: Iterator = iter(batches)
    try:
        for i in range(warmup):
            trainer.train_step(next(it), epoch, epoch * iters + i, lr)
        _sync(trainer.runtime.device)
        start = time.perf_counter()
        for i in range(warmup, warmup + steps):
            if timer is None:
                trainer.train_step(next(it), epoch, epoch * iters + i, lr)
                continue
            t0 = timer.now()
            batch = next(it)
            t1 = timer.now()
            before = timer.inner()
            trainer.train_step(batch, epoch, epoch * iters + i, lr)
            step = timer.now() - t1
            timer.totals["input"] += t1 - t0
            timer.totals["backward + optimizer"] += step - (timer.inner() - before)
        _sync(trainer.runtime.device)
        elapsed = time.perf_counter() - start
        if before_close is not None:
            before_close()
        return elapsed
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _quiet(_msg: str) -> None:
    pass


def loss_microbench(batch: int, classes: int, repeats: int = 200) -> dict[str, float]:
    """Microseconds per forward + backward of the CKD and KD losses alone, interleaved."""
    from ckd.losses import ckd_loss, kd_loss

    g = torch.Generator().manual_seed(0)
    s = torch.randn(batch, classes, generator=g, requires_grad=True)
    t = torch.randn(batch, classes, generator=g)
    fns = {"ckd": lambda: ckd_loss(s, t, 1.0), "kd": lambda: kd_loss(s, t, 4.0)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn().backward()
            times[name].append(time.perf_counter() - start)
            s.grad = None
    return {k: 1e6 * statistics.median(v) for k, v in times.items()}


def _vm_hwm_mib() -> float:
    """This process's peak RSS (``VmHWM``; ``ru_maxrss`` would include the parent's before
    ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _children_pss_mib() -> float:
    """Summed proportional set size of this process's child processes (DataLoader workers)."""
    total = 0.0
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if stat.read_text().rsplit(")", 1)[1].split()[1] != me:
                continue
            for line in (stat.parent / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) / 1024
    return total


def _peak_memory_child(args: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: a few steps of one variant, then its peak memory: the main
    process's peak RSS and its growth over the RSS after imports, the workers' PSS."""
    from ckd.engine import Trainer

    if args.get("threads"):
        torch.set_num_threads(args["threads"])
    baseline = _vm_hwm_mib()
    cfg = config_from_dict(args["config"])
    trainer = Trainer(cfg, echo=_quiet)
    if trainer.runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.runtime.device)
    workers: list[float] = []
    run_steps(
        trainer,
        0,
        args["warmup"],
        args["steps"],
        before_close=lambda: workers.append(_children_pss_mib()),
    )
    peak = _vm_hwm_mib()
    out = {"rss_mib": peak, "rss_growth_mib": peak - baseline, "workers_pss_mib": workers[0]}
    if trainer.runtime.device.type == "cuda":
        out["cuda_mib"] = torch.cuda.max_memory_allocated(trainer.runtime.device) / 2**20
    return out


def peak_memory(
    config: dict[str, Any], warmup: int, steps: int, threads: int | None = None
) -> dict[str, Any]:
    """Peak memory of one variant, measured in a fresh Python process."""
    payload = json.dumps({"config": config, "warmup": warmup, "steps": steps, "threads": threads})
    proc = subprocess.run(
        [sys.executable, "-m", "ckd.bench.speed", "--memory-child", payload],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def profile_table(trainer: Any, epoch: int, warmup: int, steps: int, rows: int = 12) -> str:
    """torch.profiler's top operators (self CPU time) over ``steps`` steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if trainer.runtime.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    run_steps(trainer, epoch, warmup, 1)
    with profile(activities=activities) as prof:
        run_steps(trainer, epoch, 0, steps)
    key = "self_cuda_time_total" if trainer.runtime.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def bench_speed(
    spec: BenchSpec,
    variants: tuple[tuple[str, str], ...] = DEFAULT_VARIANTS,
    memory: bool = True,
    profile: bool = False,
    echo: Callable[[str], None] = print,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Measure ``variants`` side by side; returns the figures (see :func:`format_report`)."""
    from ckd.engine import Trainer

    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    result: dict[str, Any] = {"spec": spec.__dict__.copy(), "machine": machine()}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp)
        data, teacher = prepare(folder, spec)
        epochs = spec.rounds + 1
        configs = {
            v: variant_config(spec, folder, data, teacher, *v, epochs=epochs) for v in variants
        }
        trainers: dict[tuple[str, str], Any] = {}
        for v, cfg in configs.items():
            start = time.perf_counter()
            trainers[v] = Trainer(config_from_dict(cfg), echo=_quiet)
            if v[0].startswith("cache") and "cache_build_s" not in result:
                result["cache_build_s"] = time.perf_counter() - start
                size = sum(f.stat().st_size for f in (folder / "cache").iterdir())
                result["cache_mib"] = size / 2**20
                result["cache_epochs"] = epochs
        first = next(iter(trainers.values()))
        result["device"] = str(first.runtime.device)
        result["settings"] = {
            f"{p}/{m}": {
                "amp": str(t.runtime.amp).replace("torch.", "") if t.runtime.amp else "fp32",
                "channels_last": t.runtime.channels_last,
                "compile": t.cfg.run.compile,
            }
            for (p, m), t in trainers.items()
        }
        seconds: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
        for r in range(spec.rounds):
            for v, trainer in trainers.items():
                seconds[v].append(run_steps(trainer, r, spec.warmup, spec.steps))
                echo(
                    f"round {r + 1}/{spec.rounds}  {PATHS[v[0]]:<17} {METHOD_LABELS[v[1]]:<8}"
                    f"{spec.batch_size * spec.steps / seconds[v][-1]:8.1f} images/s"
                )
        images = spec.batch_size * spec.steps
        rows = []
        base = ("standard", "ckd") if ("standard", "ckd") in seconds else variants[0]
        for v in variants:
            ips = [images / s for s in seconds[v]]
            ratio = [b / s for b, s in zip(seconds[base], seconds[v], strict=True)]
            rows.append(
                {
                    "path": v[0],
                    "method": v[1],
                    "images_per_s": statistics.median(ips),
                    "images_per_s_rounds": ips,
                    "ms_per_step": 1000 * statistics.median(seconds[v]) / spec.steps,
                    "vs_a": statistics.median(ratio),
                }
            )
        result["rows"] = rows
        result["ckd_vs_kd"] = {}
        for path in PATHS:
            if (path, "ckd") in seconds and (path, "kd") in seconds:
                per_round = [
                    c / k - 1
                    for c, k in zip(seconds[(path, "ckd")], seconds[(path, "kd")], strict=True)
                ]
                result["ckd_vs_kd"][path] = statistics.median(per_round)
                result.setdefault("ckd_vs_kd_interleaved", {})[path] = (
                    interleaved_ratio(
                        trainers[(path, "ckd")],
                        trainers[(path, "kd")],
                        range(spec.rounds),
                        1,
                        spec.steps + spec.warmup - 1,
                    )
                    - 1
                )
        result["loss_us"] = loss_microbench(spec.batch_size, spec.num_classes)
        if profile:
            result["breakdown"] = {}
            result["profiles"] = {}
            for v in [v for v in variants if v[1] == "ckd" and not v[0].endswith("compiled")]:
                timer = StepTimer(trainers[v])
                try:
                    run_steps(trainers[v], spec.rounds, spec.warmup, spec.steps, timer)
                finally:
                    timer.close()
                result["breakdown"][v[0]] = {
                    k: 1000 * t / spec.steps for k, t in timer.totals.items()
                }
                result["profiles"][v[0]] = profile_table(
                    trainers[v], spec.rounds, spec.warmup, min(5, spec.steps)
                )
        del trainers
        if memory:
            for row in rows:
                if row["path"].endswith("compiled"):  # compiling again per process: skipped
                    continue
                cfg = configs[(row["path"], row["method"])]
                cfg = {**cfg, "run": {**cfg["run"], "out_dir": str(folder / "mem")}}
                row["memory"] = peak_memory(cfg, spec.warmup, min(5, spec.steps), spec.threads)
    result["machine"]["loadavg_after"] = machine().get("loadavg")
    return result


def format_report(result: dict[str, Any]) -> str:
    """The figures as Markdown tables."""
    spec, m = result["spec"], result["machine"]
    lines = [
        f"ckd bench speed: {spec['teacher']} -> {spec['student']}, batch {spec['batch_size']}, "
        f"32x32 images, {spec['num_classes']} classes; {spec['rounds']} rounds x "
        f"{spec['steps']} timed steps (+{spec['warmup']} warm-up) per variant; "
        f"device {result['device']}",
        f"machine: {m.get('gpu') or m['cpu']}, {m['nproc']} CPUs, torch {m['torch']} "
        f"({m['torch_threads']} threads); load average {m.get('loadavg')} before, "
        f"{m.get('loadavg_after')} after",
        "",
        "| path | method | images/s (median) | per round | ms/step | vs (a) | peak memory MiB "
        "(main RSS, its growth / workers) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        mem = row.get("memory") or {}
        if "rss_mib" in mem:
            memory = (
                f"{mem['rss_mib']:.0f}, +{mem['rss_growth_mib']:.0f} / {mem['workers_pss_mib']:.0f}"
            )
            if "cuda_mib" in mem:
                memory += f" (CUDA {mem['cuda_mib']:.0f})"
        else:
            memory = mem.get("error", "-")
        rounds = ", ".join(f"{x:.0f}" for x in row["images_per_s_rounds"])
        lines.append(
            f"| {PATHS[row['path']]} | {METHOD_LABELS[row['method']]} | "
            f"{row['images_per_s']:.1f} | {rounds} | {row['ms_per_step']:.0f} | "
            f"{row['vs_a']:.2f}x | {memory} |"
        )
    s = result["settings"]
    lines += ["", "settings: " + "; ".join(f"{k}: {_setting(v)}" for k, v in s.items())]
    if "cache_build_s" in result:
        lines.append(
            f"teacher cache: built in {result['cache_build_s']:.1f} s "
            f"({result['cache_epochs']} epochs x {spec['n_train'] or _n(spec)} views, "
            f"{result['cache_mib']:.2f} MiB, verified on 2 batches at each start)"
        )
    inter = result.get("ckd_vs_kd_interleaved", {})
    for path, rel in result.get("ckd_vs_kd", {}).items():
        lines.append(
            f"CKD step vs KD step, {PATHS[path]}: {100 * rel:+.1f}% time per step "
            f"(median of rounds); {100 * inter[path]:+.1f}% (median of "
            f"{spec['rounds'] * (spec['steps'] + spec['warmup'] - 1)} interleaved steps)"
        )
    lu = result.get("loss_us")
    if lu:
        lines.append(
            f"losses alone (forward + backward, [{spec['batch_size']}, {spec['num_classes']}]): "
            f"CKD {lu['ckd']:.0f} us, KD {lu['kd']:.0f} us"
        )
    if result.get("breakdown"):
        parts = list(next(iter(result["breakdown"].values())))
        lines += [
            "",
            "where a CKD step's time goes (ms/step, synchronised):",
            "",
            "| path | " + " | ".join(parts) + " |",
            "|---|" + "---|" * len(parts),
        ]
        for path, b in result["breakdown"].items():
            lines.append(f"| {PATHS[path]} | " + " | ".join(f"{b[p]:.1f}" for p in parts) + " |")
    return "\n".join(lines)


def speed_command(
    spec: BenchSpec,
    variants: str | None,
    memory: bool,
    profile: bool,
    json_out: str | None,
    echo: Callable[[str], None] = print,
) -> str:
    """``ckd bench speed``: check the arguments, run, and return the report."""
    from ckd.errors import ConfigError
    from ckd.methods import METHODS
    from ckd.models import MODELS

    for name in (spec.teacher, spec.student):
        MODELS.get(name)
    for key in ("batch_size", "steps", "warmup", "rounds", "num_workers", "threads"):
        value, least = getattr(spec, key), 0 if key in ("warmup", "num_workers") else 1
        if value is not None and value < least:
            flag = {"num_workers": "workers"}.get(key, key).replace("_", "-")
            raise ConfigError(f"--{flag} must be >= {least}; got {value}")
    chosen = DEFAULT_VARIANTS
    if variants:
        chosen = tuple(tuple(v.split(":", 1)) for v in variants.split(","))  # type: ignore[misc]
        for v in chosen:
            if len(v) != 2 or v[0] not in PATHS or v[1] not in METHOD_LABELS:
                raise ConfigError(
                    f"--variants: {':'.join(v)!r} is not PATH:METHOD with PATH one of "
                    f"{', '.join(PATHS)} and METHOD one of {', '.join(METHOD_LABELS)}"
                )
            METHODS.get(v[1])
            if v[0].startswith("cache") and v[1] == "vanilla":
                raise ConfigError(f"--variants: {':'.join(v)} has no teacher to cache")
    result = bench_speed(spec, chosen, memory=memory, profile=profile, echo=echo)
    report = format_report(result)
    if profile:
        for path, table in result.get("profiles", {}).items():
            report += (
                f"\n\ntorch.profiler, {PATHS[path]} (CKD), top operators by self time:\n{table}"
            )
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
        report += f"\nwrote {json_out}"
    return report


def _n(spec: dict[str, Any]) -> int:
    return spec["batch_size"] * (spec["warmup"] + spec["steps"])


def _setting(v: dict[str, Any]) -> str:
    compiled = {True: ", compiled", "teacher": ", teacher compiled"}.get(v["compile"], "")
    return f"{v['amp']}, {'channels_last' if v['channels_last'] else 'contiguous'}{compiled}"


if __name__ == "__main__":  # the peak-memory child process
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
        print(json.dumps(_peak_memory_child(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m ckd.bench.speed --memory-child JSON (internal)")
