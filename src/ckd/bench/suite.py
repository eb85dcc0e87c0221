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

``jobs`` > 1 (``ckd suite SUITE.yaml --jobs N``) trains N runs at once per GPU, each a process
of its own: :mod:`ckd.bench.jobs`.
"""

from __future__ import annotations

import functools
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import ckd.tasks  # noqa: F401  (registers the tasks and their config schemas)
from ckd.bench.report import find_runs, markdown_report, write_csv
from ckd.config import config_from_dict
from ckd.config_files import apply_overrides, read_yaml, resolve_config_path
from ckd.engine import Trainer
from ckd.engine.lock import FolderLock
from ckd.engine.rundir import config_difference, holds_run, read_saved_config, saved_config
from ckd.errors import ConfigError
from ckd.schema import build
from ckd.tasks.classification import ClassificationConfig as Config

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


def _config(data: dict[str, Any], overrides: list[str]) -> Config:
    cfg = config_from_dict(apply_overrides(data, overrides))
    if not isinstance(cfg, Config):
        raise ConfigError(f"a suite trains classification runs; got task {cfg.task!r}")
    return cfg


def run_folder(cfg: Config) -> Path:
    """Where the run of ``cfg`` writes (as the trainer picks it)."""
    return Path(cfg.run.out_dir) if cfg.run.out_dir is not None else cfg.default_out_dir()


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
    return _config(data, over)


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
    return _config(data, over)


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
    out = run_folder(cfg)
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
        from ckd.bench.jobs import run_jobs

        run_jobs(suite, path, overrides or [], runs, jobs, threads, mps)
    else:
        if threads is not None:
            torch.set_num_threads(threads)
        if teacher is None:
            cfg = teacher_config(suite)
            say(f"[teacher] {suite.teacher.name} -> {cfg.run.out_dir}")
            _train(cfg)
            teacher = str(run_folder(cfg) / "last.pt")
        start, trained = time.perf_counter(), 0
        for i, (entry, student, seed) in enumerate(runs, 1):
            cfg = run_config(suite, entry, student, seed, teacher)
            done = (run_folder(cfg) / "result.json").is_file()
            say(
                f"[{i}/{len(runs)}] {entry.label} {student} seed {seed}"
                + (": finished earlier, skipped" if done else "")
            )
            _train(cfg)
            trained += not done
        from ckd.bench.jobs import record_throughput

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
    return str(run_folder(teacher_config(suite)) / "last.pt")


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
