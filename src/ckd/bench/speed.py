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
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
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
from ckd.engine.graphs import WARMUP_STEPS
from ckd.errors import ConfigError
from ckd.models import create_model

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
#: The official code's distiller of each method (mdistiller's names); with --reference.
REFERENCE_METHODS = {"ckd": "CKD", "kd": "KD"}
#: Untimed steps that compile a compiled variant, or warm up and capture a graphed one.
PRIME_STEPS = {"compiled": 2, "graphs": WARMUP_STEPS + 2}


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
    reference: str | None = None  # a checkout of the official CKD code (--reference)

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
    from ckd.engine.runtime import BF16_FLAGS, cpu_flags, native_bf16

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainerSteps:
    """A :class:`~ckd.engine.Trainer` as a timed variant: its loader's steps, its
    ``train_step``."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.device = trainer.runtime.device
        self.steps_per_epoch = trainer.task.loader.steps_per_epoch

    def batches(self, epoch: int) -> Iterator[Any]:
        self.trainer.distiller.train()
        return iter(self.trainer.task.loader.epoch(epoch))

    def step(self, batch: Any, epoch: int, i: int) -> None:
        t = self.trainer
        t.train_step(batch, epoch, epoch * self.steps_per_epoch + i, t.cfg.optim.lr)


def _import_reference(path: str) -> dict[str, Any]:
    """The pieces of the official CKD code (a checkout at ``path``, its ``mdistiller``
    package) that its CIFAR training step is made of."""
    root = Path(path)
    if not (root / "mdistiller" / "__init__.py").is_file():
        raise ConfigError(
            f"--reference: {path} is not a checkout of the official CKD code (no "
            "mdistiller/__init__.py in it)"
        )
    sys.path.insert(0, str(root.resolve()))
    try:
        from mdistiller.dataset.cifar100 import CIFAR100Instance, get_cifar100_train_transform
        from mdistiller.distillers import distiller_dict
        from mdistiller.engine.cfg import CFG
        from mdistiller.engine.trainer import BaseTrainer
        from mdistiller.models import cifar_model_dict
    except ImportError as e:
        raise ConfigError(
            f"--reference: the official code at {path} does not import ({e}); install its "
            "requirements (yacs, tensorboardX, scipy) where this Python finds them, e.g. "
            "pip install --target DIR yacs tensorboardX and PYTHONPATH=DIR"
        ) from None
    return {
        "dataset": CIFAR100Instance,
        "transform": get_cifar100_train_transform,
        "distillers": distiller_dict,
        "cfg": CFG,
        "trainer": BaseTrainer,
        "models": cifar_model_dict,
    }


@contextlib.contextmanager
def _cuda_calls_stay_on_cpu(device: torch.device) -> Iterator[None]:
    """The official step moves its batch with ``.cuda()``; on the CPU that is a no-op here."""
    if device.type == "cuda":
        yield
        return
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = saved  # type: ignore[method-assign]


class ReferenceSteps:
    """The official CKD code's own training step as a timed variant: its CIFAR models (the
    teacher loaded from the same checkpoint), its distiller (``CKD`` or ``KD``, its default
    weights), its SGD and ``BaseTrainer.train_iter`` (forward, summed loss, backward, step, its
    loss and accuracy meters), fed by its CIFAR-100 pipeline (``CIFAR100Instance``, its
    RandomCrop + flip + Normalize transform, a shuffled DataLoader of ``num_workers``), in
    full precision and the contiguous layout, as it runs. Wrapped in ``DataParallel`` as its
    ``tools/train.py`` does (a pass-through on one device)."""

    def __init__(self, spec: BenchSpec, method: str, data: Path, teacher: Path) -> None:
        from torch.utils.data import DataLoader

        from ckd.engine.runtime import pick_device

        ref = _import_reference(spec.reference or "")
        self.device = pick_device(spec.device)
        models = ref["models"]
        for name in (spec.teacher, spec.student):
            if name not in models:
                raise ConfigError(f"--reference: the official code has no CIFAR model {name!r}")
        cfg = ref["cfg"].clone()
        cfg.DISTILLER.TYPE = REFERENCE_METHODS[method]
        cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.LR = spec.batch_size, 0.05
        torch.manual_seed(0)
        teacher_net = models[spec.teacher][0](num_classes=spec.num_classes)
        teacher_net.load_state_dict(torch.load(teacher, weights_only=True)["model"])
        student = models[spec.student][0](num_classes=spec.num_classes)
        distiller = ref["distillers"][cfg.DISTILLER.TYPE](student, teacher_net, cfg)
        if self.device.type == "cuda":
            distiller = distiller.cuda()
        self.distiller = torch.nn.DataParallel(distiller)
        self.trainer = ref["trainer"].__new__(ref["trainer"])  # no log folders, no writer
        self.trainer.cfg, self.trainer.distiller = cfg, self.distiller
        self.trainer.optimizer, _ = ref["trainer"].init_optimizer(self.trainer, cfg)

        base = ref["dataset"]

        class Generated(base):  # the generated files have no published md5 to check
            train_list = [[name, None] for name, _ in base.train_list]
            test_list = [[name, None] for name, _ in base.test_list]
            meta = {**base.meta, "md5": None}

        train = Generated(root=str(data), train=True, transform=ref["transform"]())
        self.loader = DataLoader(
            train, batch_size=spec.batch_size, shuffle=True, num_workers=spec.num_workers
        )
        self.steps_per_epoch = len(self.loader)
        self.meters: dict[str, Any] = {}

    def batches(self, epoch: int) -> Iterator[Any]:
        from mdistiller.engine.utils import AverageMeter

        self.distiller.train()
        self.meters = {
            k: AverageMeter() for k in ("training_time", "data_time", "losses", "top1", "top5")
        }
        return iter(self.loader)

    def step(self, batch: Any, epoch: int, i: int) -> None:
        with _cuda_calls_stay_on_cpu(self.device):
            type(self.trainer).train_iter(self.trainer, batch, epoch + 1, self.meters)


def _close(it: Iterator[Any]) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


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


def timed_steps(variant: Any, epoch: int) -> Iterator[float]:
    """The steps of ``epoch`` one at a time: yields the seconds each took (batch included)."""
    it = variant.batches(epoch)
    try:
        for i in range(variant.steps_per_epoch):
            start = time.perf_counter()
            variant.step(next(it), epoch, i)
            _sync(variant.device)
            yield time.perf_counter() - start
    finally:
        _close(it)


def interleaved_ratio(a: Any, b: Any, epochs: range, warmup: int, steps: int) -> float:
    """Median over steps of (step time of ``a``) / (step time of ``b``), the two variants
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


def prime(variant: Any, epoch: int, n: int) -> float:
    """``n`` untimed steps of ``epoch`` (passing over it again if it is shorter): compiles a
    compiled variant, warms up and captures a graphed one. Returns the seconds."""
    start, done = time.perf_counter(), 0
    while done < n:
        it = variant.batches(epoch)
        try:
            for i, batch in enumerate(it):
                variant.step(batch, epoch, i)
                done += 1
                if done == n:
                    break
        finally:
            _close(it)
    _sync(variant.device)
    return time.perf_counter() - start


def run_steps(
    variant: Any,
    epoch: int,
    warmup: int,
    steps: int,
    timer: StepTimer | None = None,
    before_close: Callable[[], None] | None = None,
) -> float:
    """Run ``warmup`` then ``steps`` training steps of ``epoch``; seconds the timed ones took.
    ``before_close`` is called after the steps, while the epoch's loader is still open."""
    iters = variant.steps_per_epoch
    if warmup + steps > iters:
        raise ValueError(f"{warmup} + {steps} steps asked, the epoch has {iters}")
    it = variant.batches(epoch)
    try:
        for i in range(warmup):
            variant.step(next(it), epoch, i)
        _sync(variant.device)
        start = time.perf_counter()
        for i in range(warmup, warmup + steps):
            if timer is None:
                variant.step(next(it), epoch, i)
                continue
            t0 = timer.now()
            batch = next(it)
            t1 = timer.now()
            before = timer.inner()
            variant.step(batch, epoch, i)
            step = timer.now() - t1
            timer.totals["input"] += t1 - t0
            timer.totals["backward + optimizer"] += step - (timer.inner() - before)
        _sync(variant.device)
        elapsed = time.perf_counter() - start
        if before_close is not None:
            before_close()
        return elapsed
    finally:
        _close(it)


def train_epoch(trainer: Any, epoch: int) -> float:
    """Seconds of one training epoch as ``Trainer.fit`` runs it (each step's
    ``train_step``, the task's statistics and the loss terms summed on the device; no
    evaluation, no checkpoint), the device synchronised at the end."""
    from ckd.engine.trainer import Window

    window, spe = Window(), trainer.steps_per_epoch
    trainer.distiller.train()
    _sync(trainer.runtime.device)
    start = time.perf_counter()
    for i, micro_batches in enumerate(trainer.task.loader.epoch(epoch)):
        step = epoch * spe + i
        done = trainer.train_step(micro_batches, epoch, step, trainer.schedule(step))
        for mb, (logits, terms) in zip(micro_batches, done, strict=True):
            window.add(terms, trainer.task.train_stats(logits, mb.targets), len(mb.index))
    _sync(trainer.runtime.device)
    return time.perf_counter() - start


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
        TrainerSteps(trainer),
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
    run_steps(TrainerSteps(trainer), epoch, warmup, 1)
    with profile(activities=activities) as prof:
        run_steps(TrainerSteps(trainer), epoch, 0, steps)
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
            row = {
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
    from ckd.engine.runtime import pick_device
    from ckd.methods import METHODS
    from ckd.models import MODELS

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


if __name__ == "__main__":  # the peak-memory child process
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
        print(json.dumps(_peak_memory_child(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m ckd.bench.speed --memory-child JSON (internal)")
