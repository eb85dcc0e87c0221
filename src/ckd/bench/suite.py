"""Fair benchmark suites: every (method, student, seed) on one shared schedule.

A suite YAML names a base config, a teacher (trained once by the suite and reused, or a given
checkpoint), students, methods and seeds::

    name: fmnist_ckd
    base: fashion_mnist/_base          # shipped config name or path: data, optim, run
    overrides: [optim.epochs=6]        # applied to every run: ONE schedule shared by all
    teacher: {name: resnet20, overrides: [optim.epochs=8]}   # or checkpoint: path
    students: [resnet8]
    methods:
      - {label: CE, method: {name: vanilla}}
      - {label: CKD, method: {name: ckd, w_ckd: 10.0}}
      - {label: CKD b16, method: {name: ckd}, overrides: [data.batch_size=16]}
    seeds: [0, 1, 2]
    compare: [[CKD b16, CKD]]          # extra paired comparisons (first minus second) to report

Runs land in ``<out_dir>/<label>/<student>/seed<k>``; a finished run (``result.json``) is
skipped and an interrupted one resumed, so a stopped suite picks up where it was. The suite
folder is locked (:mod:`ckd.engine.lock`) while a suite runs in it: a second ``ckd suite`` on
it stops at once with one line naming the first. At the end
``results.csv`` (one row per run), ``report.md`` (mean ± std of the last-epoch top-1 over seeds,
differences to CE-only and KD paired by seed with their t intervals, see ckd.bench.report),
``differences.csv``, ``bars.png`` and ``differences.png`` are written.

``jobs`` > 1 (``ckd suite SUITE.yaml --jobs N``) trains N runs at once per GPU, every GPU of the
machine filled, each run a process of its own (``python -m ckd.bench.suite --child``) that
sees one GPU (``CUDA_VISIBLE_DEVICES``) and computes what it would alone; small CIFAR models
at batch 64 leave a GPU mostly idle, and N processes fill it. With CUDA MPS (a running daemon,
or a private one the suite starts when ``nvidia-cuda-mps-control`` is there) their kernels
share the GPU at once instead of taking turns. On the CPU the N processes split the cores
(``threads`` torch threads each). The teacher is trained, and every teacher cache the runs
name is built, once before the jobs start; each run's output goes to ``<out_dir>/logs/``, and
``throughput.json`` records the suite's runs per hour.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckd.bench.report import find_runs, markdown_report, write_csv
from ckd.config import (
    Config,
    apply_overrides,
    config_from_dict,
    read_yaml,
    resolve_config_path,
)
from ckd.engine import Trainer
from ckd.engine.lock import FolderLock
from ckd.engine.rundir import config_difference, holds_run, read_saved_config, saved_config
from ckd.errors import ConfigError
from ckd.schema import build

say = functools.partial(print, flush=True)


@dataclass
class SuiteTeacher:
    name: str
    checkpoint: str | None = None  # given: used as is; null: trained by the suite
    overrides: list[str] = field(default_factory=list)  # for training it (e.g. more epochs)
    seed: int = 0
    out_dir: str | None = None  # where it is trained (default <suite>/teacher); suites that
    # name the same folder and settings share one teacher, trained by whichever runs first


@dataclass
class SuiteEntry:
    label: str
    method: dict[str, Any]
    overrides: list[str] = field(default_factory=list)  # this entry only (e.g. batch size)


@dataclass
class Suite:
    name: str
    base: str
    teacher: SuiteTeacher
    students: list[str]
    methods: list[SuiteEntry]
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[str] = field(default_factory=list)
    out_dir: str | None = None
    description: str = ""
    # extra paired comparisons for the report: [label A, label B] (A minus B, per student)
    compare: list[list[str]] = field(default_factory=list)

    def root(self) -> Path:
        return Path(self.out_dir or Path("runs") / "suites" / self.name)


def load_suite(path: str | Path, overrides: list[str] | None = None) -> Suite:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"suite file {str(path)!r} not found")
    data = apply_overrides(read_yaml(p.resolve()), overrides or [])
    suite = build(Suite, data, "")
    labels = [e.label for e in suite.methods]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"methods: labels must be unique; got {labels}")
    for label in labels:
        if not re.fullmatch(r"[\w.+ -]+", label):
            raise ConfigError(
                f"methods: label {label!r} may use letters, digits, _ . + - and space"
            )
    for pair in suite.compare:
        if len(pair) != 2 or not set(pair) <= set(labels):
            raise ConfigError(f"compare: each entry is two labels of methods; got {pair}")
    if not suite.seeds or not suite.students or not suite.methods:
        raise ConfigError("a suite needs at least one seed, one student and one method")
    return suite


def _run_dir(suite: Suite, label: str, student: str, seed: int) -> Path:
    return suite.root() / label.replace(" ", "_") / student / f"seed{seed}"


def _base(suite: Suite) -> dict[str, Any]:
    data = read_yaml(resolve_config_path(suite.base).resolve())
    for key in ("student", "teacher", "method"):
        data.pop(key, None)
    return data


def teacher_config(suite: Suite) -> Config:
    data = _base(suite)
    data.update(
        student={"name": suite.teacher.name}, method={"name": "vanilla"}, description="teacher"
    )
    over = [
        *suite.overrides,
        *suite.teacher.overrides,
        f"run.seed={suite.teacher.seed}",
        f"run.out_dir={suite.teacher.out_dir or suite.root() / 'teacher'}",
    ]
    return config_from_dict(apply_overrides(data, over))


def run_config(suite: Suite, entry: SuiteEntry, student: str, seed: int, teacher: str) -> Config:
    """The config of one run; ``teacher`` is the teacher checkpoint path."""
    data = _base(suite)
    data.update(student={"name": student}, method=dict(entry.method), description=entry.label)
    over = [
        *suite.overrides,
        *entry.overrides,
        f"run.seed={seed}",
        f"run.out_dir={_run_dir(suite, entry.label, student, seed)}",
    ]
    from ckd.methods import METHODS

    names = [entry.method.get("name"), *(m.get("name") for m in entry.method.get("also", []))]
    if any(n in METHODS and METHODS.get(n).needs_teacher for n in names):
        data["teacher"] = {"name": suite.teacher.name, "checkpoint": teacher}
    return config_from_dict(apply_overrides(data, over))


def plan(suite: Suite, suite_file: str) -> list[tuple[SuiteEntry, str, int]]:
    """Every run of the suite (seed-major order), each config validated before anything runs."""
    runs = [(e, s, seed) for seed in suite.seeds for e in suite.methods for s in suite.students]
    stand_in = suite.teacher.checkpoint or suite_file  # an existing file for the checks
    for entry, student, seed in runs:
        try:
            run_config(suite, entry, student, seed, stand_in)
        except ConfigError as e:
            raise ConfigError(f"methods[{entry.label}] {student} seed {seed}: {e}") from None
    if suite.teacher.checkpoint is None:
        teacher_config(suite)
    return runs


def _train(cfg: Config) -> dict[str, Any]:
    """Train, resume, or (finished) skip a run; a finished run made with other settings is an
    error, never silently reused."""
    out = Path(cfg.run.out_dir)
    if (out / "result.json").is_file():
        differs = config_difference(
            saved_config(read_saved_config(out / "config.yaml")), cfg.to_dict()
        )
        if differs:
            raise ConfigError(f"{out} holds a finished run with other settings: {differs}")
        return {}
    return Trainer(cfg, resume=holds_run(out), echo=say).fit()


def run_suite(
    path: str | Path,
    overrides: list[str] | None = None,
    jobs: int = 1,
    threads: int | None = None,
    mps: str = "auto",
) -> Path:
    """Run (or resume) a suite and write its results; returns the suite folder. ``jobs``: runs
    at once per GPU (or on the CPU), each in its own process; ``threads``: torch threads of each
    run (default: torch's for one job, the cores split between the jobs otherwise); ``mps``:
    ``auto`` (CUDA MPS for the jobs when the machine has it) or ``off``."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1; got {jobs}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1; got {threads}")
    if mps not in ("auto", "off"):
        raise ConfigError(f"--mps must be auto or off; got {mps!r}")
    suite = load_suite(path, overrides)
    runs = plan(suite, str(path))
    root = suite.root()
    root.mkdir(parents=True, exist_ok=True)
    with FolderLock(root, "suite folder"):
        return _run_suite(suite, runs, root, path, overrides, jobs, threads, mps)


def _run_suite(
    suite: Suite,
    runs: list[tuple[SuiteEntry, str, int]],
    root: Path,
    path: str | Path,
    overrides: list[str] | None,
    jobs: int,
    threads: int | None,
    mps: str,
) -> Path:
    (root / "suite.yaml").write_text(Path(path).read_text())
    teacher = suite.teacher.checkpoint
    if jobs > 1:
        _run_jobs(suite, path, overrides or [], runs, jobs, threads, mps)
    else:
        if threads is not None:
            torch.set_num_threads(threads)
        if teacher is None:
            cfg = teacher_config(suite)
            say(f"[teacher] {suite.teacher.name} -> {cfg.run.out_dir}")
            _train(cfg)
            teacher = str(Path(cfg.run.out_dir) / "last.pt")
        start, trained = time.perf_counter(), 0
        for i, (entry, student, seed) in enumerate(runs, 1):
            cfg = run_config(suite, entry, student, seed, teacher)
            done = (Path(cfg.run.out_dir) / "result.json").is_file()
            say(
                f"[{i}/{len(runs)}] {entry.label} {student} seed {seed}"
                + (": finished earlier, skipped" if done else "")
            )
            _train(cfg)
            trained += not done
        record_throughput(root, trained, time.perf_counter() - start, 1, [], 1, threads, False)
    command = " ".join(["ckd suite", shlex.quote(str(path)), *map(shlex.quote, overrides or [])])
    if jobs > 1:
        command += f" --jobs {jobs}" + (f" --threads {threads}" if threads else "")
    write_results(root, suite.name, command, suite.description, _pairs(suite.compare))
    return root


def _pairs(compare: list[list[str]]) -> list[tuple[str, str]]:
    return [(a, b) for a, b in compare]


def _teacher_path(suite: Suite) -> str:
    if suite.teacher.checkpoint is not None:
        return suite.teacher.checkpoint
    return str(Path(teacher_config(suite).run.out_dir) / "last.pt")


def _gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (none: [])."""
    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def cuda_mps(mode: str, gpus: list[str], jobs: int) -> Iterator[dict[str, str] | None]:
    """CUDA MPS for the jobs: the environment of a running daemon, or of a private one started
    here (pipe and log folders of its own, so only the suite's jobs use it; stopped at the end)
    when ``nvidia-cuda-mps-control`` is on the PATH; None without (the jobs then take turns on
    the GPU, as separate processes do)."""
    if mode == "off" or not gpus or jobs < 2:
        yield None
        return
    pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    if Path(pipe, "control").exists():
        say(f"CUDA MPS: using the daemon running at {pipe}")
        yield {}
        return
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        say("CUDA MPS: no nvidia-cuda-mps-control here; the jobs share the GPU by time-slicing")
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="ckd-mps-"))  # short: a socket path lives there
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe")}
    env["CUDA_MPS_LOG_DIRECTORY"] = str(folder / "log")
    for d in env.values():
        Path(d).mkdir()
    full = {**os.environ, **env, "CUDA_VISIBLE_DEVICES": ",".join(gpus)}
    started = subprocess.run([control, "-d"], env=full, capture_output=True, text=True)
    if started.returncode != 0:
        say(f"CUDA MPS: the daemon did not start ({started.stderr.strip()[:200]}); time-slicing")
        shutil.rmtree(folder, ignore_errors=True)
        yield None
        return
    say(f"CUDA MPS: a daemon of this suite's own ({folder})")
    try:
        yield env
    finally:
        subprocess.run([control], input="quit\n", env=full, capture_output=True, text=True)
        shutil.rmtree(folder, ignore_errors=True)


def _child(args: dict[str, Any], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """A process of its own for one piece of the suite (:func:`_child_main`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ckd.bench.suite", "--child", json.dumps(args)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        )


def _run_jobs(
    suite: Suite,
    path: str | Path,
    overrides: list[str],
    runs: list[tuple[SuiteEntry, str, int]],
    jobs: int,
    threads: int | None,
    mps: str,
) -> None:
    """The suite's runs, ``jobs`` at once per GPU (or on the CPU), each in its own process;
    the teacher and the teacher caches first; ``throughput.json`` at the end."""
    root = suite.root()
    gpus = _gpus()
    slots = [g for g in gpus for _ in range(jobs)] or [None] * jobs
    per_run = threads or max(1, _cores() // len(slots))
    thread_env = {k: str(per_run) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    base = {"suite": str(path), "overrides": overrides, "threads": per_run}
    where = f"{len(gpus)} GPU(s) x {jobs}" if gpus else f"the CPU ({_cores()} cores)"
    say(f"{len(runs)} runs, {len(slots)} at once on {where}, {per_run} torch thread(s) each")

    def alone(args: dict[str, Any], log: Path, what: str) -> None:
        """One piece on the whole machine (all cores, the first GPU), waited for."""
        env = {"CUDA_VISIBLE_DEVICES": gpus[0]} if gpus else {}
        code = _child({**args, "threads": threads or _cores()}, log, env).wait()
        if code != 0:
            raise ConfigError(f"{what} failed (exit code {code}); its output: {log}")

    if suite.teacher.checkpoint is None:
        cfg = teacher_config(suite)
        if not (Path(cfg.run.out_dir) / "result.json").is_file():
            say(f"[teacher] {suite.teacher.name} -> {cfg.run.out_dir}")
            alone({**base, "teacher": True}, root / "logs" / "teacher.log", "the teacher")
        else:
            _train(cfg)  # finished: checked against the suite's settings, not trained again
    teacher = _teacher_path(suite)
    caches: dict[str, int] = {}
    for i, (entry, student, seed) in enumerate(runs):
        folder = run_config(suite, entry, student, seed, teacher).run.teacher_cache
        if folder is not None and folder not in caches:
            caches[folder] = i
    for folder, i in caches.items():  # built once, not by several jobs at the same time
        say(f"[cache] {folder}")
        alone({**base, "index": i, "prepare": True}, root / "logs" / "cache.log", "the cache")

    todo = []
    for i, (entry, student, seed) in enumerate(runs):
        cfg = run_config(suite, entry, student, seed, teacher)
        name = f"{entry.label} {student} seed {seed}"
        if (Path(cfg.run.out_dir) / "result.json").is_file():
            say(f"[{i + 1}/{len(runs)}] {name}: finished earlier, skipped")
            _train(cfg)  # checks the settings
        else:
            log = root / "logs" / f"{entry.label.replace(' ', '_')}_{student}_seed{seed}.log"
            todo.append((i, name, log))
    failed: list[str] = []
    running: dict[int, tuple[subprocess.Popen, int, str, Path, float]] = {}
    free, started = list(range(len(slots))), len(todo)
    start = time.perf_counter()
    with cuda_mps(mps, gpus, jobs) as mps_env:
        while todo or running:
            while todo and free:
                slot = free.pop(0)
                i, name, log = todo.pop(0)
                env = dict(thread_env)
                if slots[slot] is not None:
                    env["CUDA_VISIBLE_DEVICES"] = slots[slot]
                env.update(mps_env or {})
                proc = _child({**base, "index": i}, log, env)
                running[slot] = (proc, i, name, log, time.perf_counter())
                gpu = f" on GPU {slots[slot]}" if slots[slot] is not None else ""
                say(f"[{i + 1}/{len(runs)}] {name}: started{gpu}")
            time.sleep(0.2)
            for slot, (proc, i, name, log, t0) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[slot]
                free.append(slot)
                if code == 0:
                    say(f"[{i + 1}/{len(runs)}] {name}: done in {time.perf_counter() - t0:.0f} s")
                else:
                    failed.append(f"{name} ({log})")
                    say(f"[{i + 1}/{len(runs)}] {name}: FAILED (exit code {code}); see {log}")
        seconds = time.perf_counter() - start
    trained = started - len(failed)
    record_throughput(root, trained, seconds, jobs, gpus, len(slots), per_run, mps_env is not None)
    if failed:
        raise ConfigError(f"{len(failed)} run(s) failed: {'; '.join(failed)[:300]}")


def record_throughput(
    root: Path,
    trained: int,
    seconds: float,
    jobs: int,
    gpus: list[str],
    at_once: int,
    threads: int | None,
    mps: bool,
) -> None:
    """``throughput.json``: the runs trained by this invocation (skipped ones not counted), the
    seconds from the first run's start to the last one's end, runs per hour; and a line."""
    if not trained:
        return
    record = {
        "jobs": jobs,
        "gpus": len(gpus),
        "processes_at_once": at_once,
        "threads_per_run": threads or torch.get_num_threads(),
        "cuda_mps": mps,
        "runs_trained": trained,
        "seconds": round(seconds, 1),
        "runs_per_hour": round(3600 * trained / seconds, 2),
    }
    (root / "throughput.json").write_text(json.dumps(record, indent=2) + "\n")
    say(
        f"throughput: {trained} runs in {seconds:.0f} s, {record['runs_per_hour']} runs/hour "
        f"({at_once} at once; {root / 'throughput.json'})"
    )


def _child_main(args: dict[str, Any]) -> int:
    """One piece of a suite run with ``--jobs``, in a process of its own: the teacher
    (``teacher``), a run's teacher cache (``prepare``: the run's trainer is built, which builds
    the cache, and not trained) or run ``index``, with ``threads`` torch threads."""
    torch.set_num_threads(args["threads"])
    suite = load_suite(args["suite"], args["overrides"])
    if args.get("teacher"):
        _train(teacher_config(suite))
        return 0
    entry, student, seed = plan(suite, args["suite"])[args["index"]]
    cfg = run_config(suite, entry, student, seed, _teacher_path(suite))
    if args.get("prepare"):
        Trainer(cfg, resume=holds_run(cfg.run.out_dir), echo=say)
        return 0
    _train(cfg)
    return 0


def write_results(
    root: Path,
    title: str,
    command: str,
    notes: str = "",
    compare: list[tuple[str, str]] | None = None,
    runs: list[Path] | None = None,
    echo: bool = True,
) -> str:
    """``results.csv``, ``report.md``, ``differences.csv``, ``bars.png`` and
    ``differences.png`` in ``root`` from the finished runs under ``runs`` (default: ``root``)."""
    from ckd.bench.plots import plot_bars, plot_differences
    from ckd.bench.report import aggregate, comparisons, write_differences_csv

    rows = [r for r in find_runs(runs or [root]) if r["label"] != "teacher"]
    root.mkdir(parents=True, exist_ok=True)
    write_csv(rows, root / "results.csv")
    report = markdown_report(rows, title, command, notes, compare)
    (root / "report.md").write_text(report)
    found = comparisons(aggregate(rows), compare)
    write_differences_csv(found, root / "differences.csv")
    if rows:
        plot_bars(rows, root / "bars.png", title)
    if found:
        plot_differences(found, root / "differences.png", title)
    if echo:
        say(report)
    return report


def main_report(paths: list[str], out: str | None) -> str:
    """``ckd report RUN_DIRS... [--out DIR]``: the report of the finished runs found under
    ``paths``, written to ``DIR``, or to the one folder given; a suite folder's own
    ``suite.yaml`` gives the title, notes and compare pairs."""
    if out is None and len(paths) != 1:
        raise ConfigError("several folders: give --out DIR for results.csv and report.md")
    dirs = [Path(p) for p in paths]
    rows = [r for r in find_runs(dirs) if r["label"] != "teacher"]
    if not rows:
        raise ConfigError(f"no finished runs (result.json + config.yaml) under {', '.join(paths)}")
    title, notes, compare = "report", "", None
    suite_file = dirs[0] / "suite.yaml"
    if len(dirs) == 1 and suite_file.is_file():
        data = read_yaml(suite_file.resolve())
        title, notes = str(data.get("name", title)), str(data.get("description", ""))
        compare = _pairs(data.get("compare") or [])
    command = "ckd report " + " ".join(map(shlex.quote, paths))
    if out:
        command += f" --out {shlex.quote(out)}"
    target = Path(out) if out else dirs[0]
    report = write_results(target, title, command, notes, compare, runs=dirs, echo=False)
    sys.stdout.write(report)
    print(
        f"wrote {target / 'report.md'}, results.csv, differences.csv and figures", file=sys.stderr
    )
    return report


if __name__ == "__main__":  # a piece of a suite run with --jobs (run_suite starts these)
    if len(sys.argv) != 3 or sys.argv[1] != "--child":
        sys.exit("usage: python -m ckd.bench.suite --child JSON (internal)")
    from ckd.cli import USER_ERRORS
    from ckd.errors import one_line

    try:
        sys.exit(_child_main(json.loads(sys.argv[2])))
    except USER_ERRORS as e:
        print(f"ckd: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
