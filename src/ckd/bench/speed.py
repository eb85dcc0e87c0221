"""``ckd bench speed``: images/s of a distillation step, the input paths side by side.

Each variant is a real :class:`~ckd.engine.Trainer` on a generated CIFAR-format dataset (the
standard path reads it through torchvision's CIFAR class and PIL transforms, exactly as for the
real data) with a randomly initialised teacher (speed does not depend on the weights):

- **(a) standard**: torchvision PIL transforms in DataLoader workers, fp32, contiguous layout,
  the teacher run on every step (the reference code base's pipeline);
- **(b) fast**: ``data.loader=fast`` with the device's default precision and layout
  (``run.amp=auto``: bf16 on CUDA and on CPUs with native bf16; ``run.channels_last=auto``),
  the teacher under ``inference_mode``;
- **(c) fast + cache**: (b) with ``run.teacher_cache`` (built once before timing; its build
  time is reported apart);
- **(b+)**, **(c+)**: (b) and (c) with ``run.compile=true`` (``torch.compile`` of the student
  and, without a cache, of the frozen teacher for inference);
- **(b*)**, **(c*)**: (b) and (c) with ``run.cuda_graphs=true`` (the whole step one CUDA graph;
  CUDA only);
- **(r)** with ``--reference PATH``: the official CKD code's own step (its ``mdistiller``
  package at PATH, not shipped here: its CIFAR models, its distiller, its
  ``BaseTrainer.train_iter`` and its CIFAR-100 training pipeline), same models, data and batch.

Compiled and graphed variants are compiled (captured) in untimed steps before the rounds; the
seconds that took are reported apart. The variants are then timed in rounds: in each round
every variant runs ``warmup`` untimed steps then ``steps`` timed steps of a new epoch, one
variant after the other, so that a slow spell of a noisy machine hits all of them alike; the
figures are medians over rounds, and the ratios medians of the per-round ratios. Peak memory is
measured in a fresh process per variant.

Why over 400 lines: one benchmark's variants and their configs, its interleaved rounds, its report
and its command's argument checks; the timing and memory helpers are :mod:`ckd.bench.timing`, the
official code's step :mod:`ckd.bench.reference`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

import ckd.tasks  # noqa: F401  (registers the tasks and their config schemas)
from ckd.bench.reference import REFERENCE_METHODS, ReferenceSteps, _import_reference
from ckd.bench.timing import (
    BenchSpec,
    StepTimer,
    TrainerSteps,
    _quiet,
    interleaved_ratio,
    loss_microbench,
    peak_memory,
    prime,
    profile_table,
    run_steps,
)
from ckd.config import config_from_dict
from ckd.data import make_fake_cifar
from ckd.engine import Trainer
from ckd.engine.graphs import WARMUP_STEPS
from ckd.engine.runtime import BF16_FLAGS, cpu_flags, native_bf16, pick_device
from ckd.errors import ConfigError
from ckd.methods import METHODS
from ckd.models import MODELS, create_model

PATHS = {
    "reference": "(r) official CKD code",
    "standard": "(a) standard",
    "fast": "(b) fast",
    "fast-compiled": "(b+) fast, compiled",
    "fast-graphs": "(b*) fast, CUDA graph",
    "cache": "(c) fast + cache",
    "cache-compiled": "(c+) fast + cache, compiled",
    "cache-graphs": "(c*) fast + cache, CUDA graph",
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
#: Added to the defaults on CUDA: the paths as one CUDA graph, CKD and KD.
GRAPH_VARIANTS = (
    ("fast-graphs", "ckd"),
    ("cache-graphs", "ckd"),
    ("fast-graphs", "kd"),
    ("cache-graphs", "kd"),
)
#: Untimed steps that compile a compiled variant, or warm up and capture a graphed one.
PRIME_STEPS = {"compiled": 2, "graphs": WARMUP_STEPS + 2}


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

    flags = cpu_flags()
    shown = sorted(f for f in flags if f in {"avx2", "avx512f", *BF16_FLAGS})
    info["cpu_flags"] = shown
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["cpu_bf16"] = (
        ("native bf16: " if native_bf16(flags) else "no native bf16: ") + " ".join(shown)
        if flags
        else ""
    )
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
            "verify": False,  # generated by prepare(): not the published CIFAR files
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
            "cuda_graphs": path.endswith("-graphs"),
            "teacher_cache": str(folder / "cache") if path.startswith("cache") else None,
            "out_dir": str(folder / f"run-{path}-{method}"),
            "tensorboard": False,
            "progress": False,
        },
    }
    if method != "vanilla":
        cfg["teacher"] = {"name": spec.teacher, "checkpoint": str(teacher)}
    return cfg


def bench_speed(
    spec: BenchSpec,
    variants: tuple[tuple[str, str], ...] = DEFAULT_VARIANTS,
    memory: bool = True,
    profile: bool = False,
    echo: Callable[[str], None] = print,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Measure ``variants`` side by side; returns the figures (see :func:`format_report`)."""

    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    result: dict[str, Any] = {"spec": spec.__dict__.copy(), "machine": machine()}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp)
        data, teacher = prepare(folder, spec)
        epochs = spec.rounds + 1
        configs = {
            v: variant_config(spec, folder, data, teacher, *v, epochs=epochs)
            for v in variants
            if v[0] != "reference"
        }
        steppers: dict[tuple[str, str], Any] = {}
        for v in variants:
            start = time.perf_counter()
            if v[0] == "reference":
                steppers[v] = ReferenceSteps(spec, v[1], data, teacher)
                continue
            steppers[v] = TrainerSteps(Trainer(config_from_dict(configs[v]), echo=_quiet))
            if v[0].startswith("cache") and "cache_build_s" not in result:
                result["cache_build_s"] = time.perf_counter() - start
                size = sum(f.stat().st_size for f in (folder / "cache").iterdir())
                result["cache_mib"] = size / 2**20
                result["cache_epochs"] = epochs
        result["device"] = str(next(iter(steppers.values())).device)
        result["settings"] = {f"{p}/{m}": _settings(st) for (p, m), st in steppers.items()}
        result["prime_s"] = {}
        for v, st in steppers.items():
            kind = v[0].rsplit("-", 1)[-1]
            if kind in PRIME_STEPS:  # compile / capture before the rounds, untimed
                result["prime_s"][f"{v[0]}/{v[1]}"] = prime(st, spec.rounds, PRIME_STEPS[kind])
        seconds: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
        for r in range(spec.rounds):
            for v, st in steppers.items():
                seconds[v].append(run_steps(st, r, spec.warmup, spec.steps))
                echo(
                    f"round {r + 1}/{spec.rounds}  {PATHS[v[0]]:<28} {METHOD_LABELS[v[1]]:<8}"
                    f"{spec.batch_size * spec.steps / seconds[v][-1]:8.1f} images/s"
                )
        images = spec.batch_size * spec.steps
        rows = []
        base = ("standard", "ckd") if ("standard", "ckd") in seconds else variants[0]
        ref = ("reference", "ckd") if ("reference", "ckd") in seconds else None
        for v in variants:
            ips = [images / s for s in seconds[v]]
            row: dict[str, Any] = {
                "path": v[0],
                "method": v[1],
                "images_per_s": statistics.median(ips),
                "images_per_s_rounds": ips,
                "ms_per_step": 1000 * statistics.median(seconds[v]) / spec.steps,
                "vs_a": _median_ratio(seconds[base], seconds[v]),
            }
            if ref is not None:
                row["vs_reference"] = _median_ratio(seconds[ref], seconds[v])
            rows.append(row)
        result["rows"] = rows
        result["ckd_vs_kd"] = {}
        # the interleaved comparison takes one untimed step, then the rest of warm-up + steps
        paired = spec.steps + spec.warmup - 1
        for path in PATHS:
            if (path, "ckd") in seconds and (path, "kd") in seconds:
                per_round = [
                    c / k - 1
                    for c, k in zip(seconds[(path, "ckd")], seconds[(path, "kd")], strict=True)
                ]
                result["ckd_vs_kd"][path] = statistics.median(per_round)
                if paired < 1:
                    continue
                result.setdefault("ckd_vs_kd_interleaved", {})[path] = (
                    interleaved_ratio(
                        steppers[(path, "ckd")],
                        steppers[(path, "kd")],
                        range(spec.rounds),
                        1,
                        paired,
                    )
                    - 1
                )
        result["loss_us"] = loss_microbench(spec.batch_size, spec.num_classes)
        if profile:
            result["breakdown"] = {}
            result["profiles"] = {}
            for v in [
                v for v in variants if v[1] == "ckd" and v[0] in ("standard", "fast", "cache")
            ]:
                trainer = steppers[v].trainer
                timer = StepTimer(trainer)
                try:
                    run_steps(steppers[v], spec.rounds, spec.warmup, spec.steps, timer)
                finally:
                    timer.close()
                result["breakdown"][v[0]] = {
                    k: 1000 * t / spec.steps for k, t in timer.totals.items()
                }
                result["profiles"][v[0]] = profile_table(
                    trainer, spec.rounds, spec.warmup, min(5, spec.steps)
                )
        del steppers
        if memory:
            for row in rows:
                if row["path"] not in ("standard", "fast", "cache"):  # compiled, graphed: the
                    continue  # child would compile / capture again; the reference: not ours
                cfg = configs[(row["path"], row["method"])]
                cfg = {**cfg, "run": {**cfg["run"], "out_dir": str(folder / "mem")}}
                row["memory"] = peak_memory(cfg, spec.warmup, min(5, spec.steps), spec.threads)
    result["machine"]["loadavg_after"] = machine().get("loadavg")
    return result


def _median_ratio(base: list[float], other: list[float]) -> float:
    """The median over rounds of ``base`` seconds / ``other`` seconds (a speed-up)."""
    return statistics.median(b / s for b, s in zip(base, other, strict=True))


def _settings(stepper: Any) -> dict[str, Any]:
    if isinstance(stepper, ReferenceSteps):
        return {"amp": "fp32", "channels_last": False, "compile": False, "graphs": False}
    rt = stepper.trainer.runtime
    return {
        "amp": str(rt.amp).replace("torch.", "") if rt.amp else "fp32",
        "channels_last": rt.channels_last,
        "compile": rt.compile,
        "graphs": rt.cuda_graphs,
    }


def format_report(result: dict[str, Any]) -> str:
    """The figures as Markdown tables."""
    spec, m = result["spec"], result["machine"]
    has_ref = any("vs_reference" in row for row in result["rows"])
    lines = [
        f"ckd bench speed: {spec['teacher']} -> {spec['student']}, batch {spec['batch_size']}, "
        f"32x32 images, {spec['num_classes']} classes; {spec['rounds']} rounds x "
        f"{spec['steps']} timed steps (+{spec['warmup']} warm-up) per variant; "
        f"device {result['device']}",
        f"machine: {m.get('gpu') or m['cpu']}, {m['nproc']} CPUs"
        f"{' (' + m['cpu_bf16'] + ')' if m.get('cpu_bf16') else ''}, torch {m['torch']} "
        f"({m['torch_threads']} threads); load average {m.get('loadavg')} before, "
        f"{m.get('loadavg_after')} after",
        "",
        "| path | method | images/s (median) | per round | ms/step | vs (a) |"
        + (" vs (r) |" if has_ref else "")
        + " peak memory MiB (main RSS, its growth / workers) |",
        "|---|---|---|---|---|---|" + ("---|" if has_ref else "") + "---|",
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
        vs_ref = f" {row['vs_reference']:.2f}x |" if has_ref else ""
        lines.append(
            f"| {PATHS[row['path']]} | {METHOD_LABELS[row['method']]} | "
            f"{row['images_per_s']:.1f} | {rounds} | {row['ms_per_step']:.0f} | "
            f"{row['vs_a']:.2f}x |{vs_ref} {memory} |"
        )
    s = result["settings"]
    lines += ["", "settings: " + "; ".join(f"{k}: {_setting(v)}" for k, v in s.items())]
    if result.get("prime_s"):
        lines.append(
            "compiled / captured before timing, untimed: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in result["prime_s"].items())
        )
    if "cache_build_s" in result:
        lines.append(
            f"teacher cache: built in {result['cache_build_s']:.1f} s "
            f"({result['cache_epochs']} epochs x {spec['n_train'] or _n(spec)} views, "
            f"{result['cache_mib']:.2f} MiB, verified on 2 batches at each start)"
        )
    inter = result.get("ckd_vs_kd_interleaved", {})
    for path, rel in result.get("ckd_vs_kd", {}).items():
        steps = spec["rounds"] * (spec["steps"] + spec["warmup"] - 1)
        fine = (
            f"{100 * inter[path]:+.1f}% (median of {steps} interleaved steps)"
            if path in inter
            else "no interleaved steps (needs --steps + --warmup >= 2)"
        )
        lines.append(
            f"CKD step vs KD step, {PATHS[path]}: {100 * rel:+.1f}% time per step "
            f"(median of rounds); {fine}"
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

    for name in (spec.teacher, spec.student):
        MODELS.get(name)
    for key in ("batch_size", "steps", "warmup", "rounds", "num_workers", "threads"):
        value, least = getattr(spec, key), 0 if key in ("warmup", "num_workers") else 1
        if value is not None and value < least:
            flag = {"num_workers": "workers"}.get(key, key).replace("_", "-")
            raise ConfigError(f"--{flag} must be >= {least}; got {value}")
    if spec.num_classes not in (10, 100):
        raise ConfigError(
            f"--classes must be 10 or 100 (the data are generated in CIFAR-10's or CIFAR-100's "
            f"format); got {spec.num_classes}"
        )
    device = pick_device(spec.device)
    chosen = DEFAULT_VARIANTS + (GRAPH_VARIANTS if device.type == "cuda" else ())
    if spec.reference:
        chosen = (("reference", "ckd"), ("reference", "kd"), *chosen)
    if variants:
        chosen = tuple(tuple(v.split(":", 1)) for v in variants.split(","))  # type: ignore[misc]  # pairs: checked below
    for v in chosen:
        if len(v) != 2 or v[0] not in PATHS or v[1] not in METHOD_LABELS:
            raise ConfigError(
                f"--variants: {':'.join(v)!r} is not PATH:METHOD with PATH one of "
                f"{', '.join(PATHS)} and METHOD one of {', '.join(METHOD_LABELS)}"
            )
        METHODS.get(v[1])
        if v[0].startswith("cache") and v[1] == "vanilla":
            raise ConfigError(f"--variants: {':'.join(v)} has no teacher to cache")
        if v[0].endswith("-graphs") and device.type != "cuda":
            raise ConfigError(
                f"--variants: {':'.join(v)} (the step as a CUDA graph) needs a CUDA device; "
                f"this benchmark runs on {device.type}"
            )
        if v[0] == "reference":
            if not spec.reference:
                raise ConfigError(
                    f"--variants: {':'.join(v)} needs --reference PATH (a checkout of the "
                    "official CKD code)"
                )
            if v[1] not in REFERENCE_METHODS:
                raise ConfigError(
                    f"--variants: {':'.join(v)}: the reference step is timed for "
                    f"{', '.join(REFERENCE_METHODS)}"
                )
            if spec.num_classes != 100:
                raise ConfigError("--reference: its CIFAR pipeline reads CIFAR-100 (--classes 100)")
    if spec.reference:
        _import_reference(spec.reference)  # a bad checkout: one line before any work
    with _quiet_cpp_extension():
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


@contextlib.contextmanager
def _quiet_cpp_extension() -> Iterator[None]:
    """torch's extension builder, imported when something is compiled, logs "No CUDA runtime is
    found" on a machine with a CUDA toolkit and no GPU: expected there, and not a figure."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    if not torch.cuda.is_available():
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _n(spec: dict[str, Any]) -> int:
    return spec["batch_size"] * (spec["warmup"] + spec["steps"])


def _setting(v: dict[str, Any]) -> str:
    compiled = {True: ", compiled", "teacher": ", teacher compiled"}.get(v["compile"], "")
    graphs = ", one CUDA graph" if v.get("graphs") else ""
    return (
        f"{v['amp']}, {'channels_last' if v['channels_last'] else 'contiguous'}{compiled}{graphs}"
    )
