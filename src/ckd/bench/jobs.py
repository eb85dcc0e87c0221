"""``ckd suite SUITE.yaml --jobs N``: a suite's runs N at once per GPU (or on the CPU), each a
process of its own (``python -m ckd.bench.jobs --child``) that sees one GPU
(``CUDA_VISIBLE_DEVICES``) and computes what it would alone; CUDA MPS when the machine has it;
the teacher and every teacher cache first; ``throughput.json`` at the end. The suite itself
(what runs, with which config, and the report) is :mod:`ckd.bench.suite`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ckd.bench.suite import (
    Suite,
    SuiteEntry,
    _teacher_path,
    _train,
    load_suite,
    plan,
    run_config,
    run_folder,
    say,
    teacher_config,
)
from ckd.engine.rundir import holds_run
from ckd.engine.trainer import Trainer
from ckd.errors import USER_ERRORS, ConfigError, one_line


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
            [sys.executable, "-m", "ckd.bench.jobs", "--child", json.dumps(args)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        )


def run_jobs(
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
    slots: list[str | None] = [g for g in gpus for _ in range(jobs)] or [None] * jobs
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
        if not (run_folder(cfg) / "result.json").is_file():
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
        if (run_folder(cfg) / "result.json").is_file():
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
                gpu_id = slots[slot]
                if gpu_id is not None:
                    env["CUDA_VISIBLE_DEVICES"] = gpu_id
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
        Trainer(cfg, resume=holds_run(run_folder(cfg)), echo=say)
        return 0
    _train(cfg)
    return 0


if __name__ == "__main__":  # a piece of a suite run with --jobs (run_suite starts these)
    if len(sys.argv) != 3 or sys.argv[1] != "--child":
        sys.exit("usage: python -m ckd.bench.jobs --child JSON (internal)")
    try:
        sys.exit(_child_main(json.loads(sys.argv[2])))
    except USER_ERRORS as e:
        print(f"ckd: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
