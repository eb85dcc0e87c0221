"""Issue 12's faults: real runs killed (SIGKILL, SIGTERM, SIGINT) at injected points resume to
the files of an uninterrupted run; a second process is kept out of a locked folder; folders that
hold no run are never written into; a diverging run stops in one line with exit code 3;
bookkeeping over processes; stale temporary files and partial cache builds are cleaned.

The runs are processes forked from one server process that imported ckd once (cheap), each
killed at a point named by ``CKD_FAULT`` (:mod:`ckd.faults`), with one thread (so files
compare bit for bit between runs of this machine, whatever its CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from ckd.bench.report import find_runs
from ckd.cli import main
from ckd.engine.cache import remove_stale_builds
from ckd.engine.checkpoint import load_checkpoint, save_atomic
from ckd.engine.lock import LOCK_NAME, FolderLock
from ckd.engine.metrics import MetricsLog, read_metrics
from ckd.engine.rundir import folder_problem
from ckd.engine.window import Window
from ckd.errors import ConfigError, DataError
from ckd.models import create_model
from tests.conftest import tiny_config
from tests.helpers import Forks


@pytest.fixture(scope="module")
def forks(tmp_path_factory):
    f = Forks(tmp_path_factory.mktemp("forks"))
    yield f
    f.close()


@pytest.fixture(scope="module")
def kd_config(tmp_path_factory, fake_fmnist) -> Path:
    """KD (two loss terms) from a random resnet8 teacher: 3 epochs of 3 steps, out_dir set by
    each test."""
    folder = tmp_path_factory.mktemp("kd")
    torch.manual_seed(0)
    teacher = folder / "teacher.pt"
    torch.save({"model": create_model("resnet8", 10, 1).state_dict()}, teacher)
    cfg = tiny_config(
        fake_fmnist,
        folder / "unused",
        data={"train_subset": 96, "test_subset": 50},
        teacher={"name": "resnet8", "checkpoint": str(teacher)},
        method={"name": "kd"},
        optim={"epochs": 3},
    )
    path = folder / "kd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def reference(forks, kd_config, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    code, log = forks.run("train", str(kd_config), f"run.out_dir={out}")
    assert code == 0, log
    return out


#: What differs between two runs of the same config besides their results: time, the folder.
VARYING = {"seconds", "train_time_s", "images_per_s", "wall_time_s", "out_dir", "payload_sha256"}


def assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) - VARYING == set(b) - VARYING, where
        for key in set(a) - VARYING:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(run: Path, reference: Path) -> None:
    """The files of ``run`` are those of the uninterrupted ``reference`` (bit for bit, but for
    times and the folder's name)."""
    for name in ("last.pt", "best.pt"):
        assert_same(load_checkpoint(run / name), load_checkpoint(reference / name), name)
    assert_same(read_metrics(run), read_metrics(reference), "metrics.jsonl")
    for name in ("result.json",):
        assert_same(
            json.loads((run / name).read_text()), json.loads((reference / name).read_text()), name
        )
    assert_same(
        yaml.safe_load((run / "config.yaml").read_text()),
        yaml.safe_load((reference / "config.yaml").read_text()),
        "config.yaml",
    )
    leftovers = {p.name for p in run.iterdir()} - {
        "config.yaml", "metrics.jsonl", "last.pt", "best.pt", "result.json", LOCK_NAME
    }  # fmt: skip
    assert not leftovers, leftovers


def kill_and_resume(forks, kd_config, out: Path, fault: str, sig: str = "KILL") -> str:
    """A run killed at ``fault``, then resumed to its end; returns the killed run's output."""
    code, log = forks.run("train", str(kd_config), f"run.out_dir={out}", fault=fault, sig=sig)
    if sig == "KILL":
        assert code == -signal.SIGKILL, (code, log)
    code2, log2 = forks.run("train", str(kd_config), f"run.out_dir={out}", "--resume")
    assert code2 == 0, log2
    return log


# --- 4: a kill at any instant resumes to the uninterrupted run's files -----------------------


@pytest.mark.parametrize(
    "fault",
    [
        "step@2",  # in epoch 1, before any checkpoint: config.yaml alone, resumed from the start
        "after:last.pt@1",  # last.pt of epoch 1 (the best so far) written, best.pt not
        "after:row@2",  # the row of epoch 2 written, its checkpoint not: the row is retrained
        "before:result.json",  # everything but result.json: derived without training
    ],
)
def test_a_kill_at_a_write_resumes_to_the_same_files(forks, kd_config, reference, tmp_path, fault):
    out = tmp_path / "run"
    kill_and_resume(forks, kd_config, out, fault)
    assert_same_run(out, reference)


def test_a_torn_metrics_line_is_dropped_by_resume_and_plots(forks, kd_config, reference, tmp_path):
    out = tmp_path / "run"
    code, _ = forks.run("train", str(kd_config), f"run.out_dir={out}", fault="torn:row@2")
    assert code == -signal.SIGKILL
    text = (out / "metrics.jsonl").read_text()
    assert not text.endswith("\n") and text.count("\n") == 1  # row 1, then half of row 2
    assert [r["epoch"] for r in read_metrics(out)] == [1]
    assert main(["plot", "curves", str(out), "--out", str(tmp_path / "c.png")]) == 0
    code, log = forks.run("train", str(kd_config), f"run.out_dir={out}", "--resume")
    assert code == 0, log
    assert_same_run(out, reference)


def test_a_kill_inside_the_metrics_rewrite_keeps_the_old_file(
    forks, kd_config, reference, tmp_path
):
    out = tmp_path / "run"
    code, _ = forks.run("train", str(kd_config), f"run.out_dir={out}", fault="after:row@2")
    assert code == -signal.SIGKILL
    before = (out / "metrics.jsonl").read_bytes()  # rows 1 and 2; last.pt of epoch 1
    assert before.count(b"\n") == 2
    args = ("train", str(kd_config), f"run.out_dir={out}", "--resume")
    code, _ = forks.run(*args, fault="inside:metrics.jsonl")
    assert code == -signal.SIGKILL
    assert (out / "metrics.jsonl").read_bytes() == before  # whole, not emptied
    assert [p.name for p in out.glob(".metrics.jsonl.*.tmp")]  # the killed rewrite's temporary
    code, log = forks.run(*args)
    assert code == 0, log
    assert_same_run(out, reference)  # the temporary of the dead process is gone too


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    [
        f"{when}:{name}@{n}"
        for name, times in (("last.pt", 3), ("best.pt", 1), ("row", 3))
        for when in ("before", "inside", "after")
        for n in range(1, times + 1)
        if not (name == "row" and when == "inside")
    ]
    + [f"{when}:config.yaml" for when in ("before", "inside", "after")]
    + [f"{when}:result.json" for when in ("inside", "after")]
    + [f"step@{n}" for n in range(1, 9)]
    + [f"torn:row@{n}" for n in (1, 3)],
)
def test_every_kill_point_resumes_to_the_same_files(forks, kd_config, reference, tmp_path, fault):
    out = tmp_path / "run"
    kill_and_resume(forks, kd_config, out, fault)
    assert_same_run(out, reference)


# --- 13: SIGTERM and SIGINT stop at a step boundary, resumable ------------------------------


@pytest.mark.parametrize(("sig", "code"), [("TERM", 143), ("INT", 130)])
def test_a_signal_stops_at_the_next_step_with_a_resumable_checkpoint(
    forks, kd_config, reference, tmp_path, sig, code
):
    out = tmp_path / "run"
    argv = ("train", str(kd_config), f"run.out_dir={out}")
    got, log = forks.run(*argv, fault="step@4", sig=sig)  # epoch 2, step 1 of 3
    assert got == code, log
    lines = [ln for ln in log.splitlines() if ln.startswith("ckd:")]
    assert lines == [
        f"ckd: stopped by SIG{sig} at epoch 2, step 1 of 3; saved {out / 'last.pt'} "
        "(continue with --resume)"
    ], log
    assert load_checkpoint(out / "last.pt")["step"] == 4
    assert not (out / "result.json").exists()
    got, log = forks.run(*argv, "--resume")
    assert got == 0, log
    assert_same_run(out, reference)  # the unfinished row of epoch 2 too


def test_sigterm_before_training_is_one_line_and_leaves_nothing(forks, kd_config, tmp_path):
    out = tmp_path / "run"
    prelude = (
        "import os, signal, ckd.engine.trainer as t\n"
        "t.teacher_outputs = lambda *a: os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    code, log = forks.run("train", str(kd_config), f"run.out_dir={out}", prelude=prelude)
    assert code == 143, log
    assert log.strip().splitlines()[-1].startswith("ckd: stopped by SIGTERM"), log
    assert "Traceback" not in log and not out.exists()


def test_only_loaders_that_restart_exactly_take_a_checkpoint_mid_epoch():
    from ckd.engine.loaders import StandardLoader

    data = torch.utils.data.TensorDataset(torch.zeros(8, 1), torch.zeros(8))
    assert StandardLoader(data, 4, 0, 0, lambda b: b).resumes_anywhere
    # with workers too: each sample's draws come from (seed, epoch, index), not a worker's RNG
    assert StandardLoader(data, 4, 2, 0, lambda b: b).resumes_anywhere


# --- 3: one process per run folder and per suite folder -------------------------------------


@pytest.fixture
def cfg_file(tmp_path, fake_fmnist) -> Path:
    cfg = tiny_config(fake_fmnist, tmp_path / "run", data={"train_subset": 96, "test_subset": 50})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_error_line(capsys, argv: list[str], code: int = 2) -> str:
    got = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert got == code and len(err) == 1 and err[0].startswith("ckd: error: "), err
    return err[0]


def snapshot(folder: Path, lock: bool = True) -> dict[str, tuple[int, bytes]]:
    """Every entry under ``folder`` (``lock``: the lock file too) with its mtime and bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in sorted(folder.rglob("*"))
        if lock or p.name != LOCK_NAME
    }


def test_a_locked_run_folder_refuses_a_second_process_naming_the_holder(tmp_path, cfg_file, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with FolderLock(out):
        before = snapshot(out)
        line = one_error_line(capsys, ["train", str(cfg_file)])
        assert f"pid {os.getpid()} on host {socket.gethostname()}, since " in line
        assert "in use by another ckd process" in line
        assert snapshot(out) == before  # nothing written, not even the lock file
        line = one_error_line(capsys, ["train", str(cfg_file), "--resume"])
        assert "in use by another ckd process" in line
    assert snapshot(out) == before


def test_a_killed_holder_releases_the_lock(forks, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    prelude = (
        "import os, signal\nfrom ckd.engine.lock import FolderLock\n"
        f"FolderLock({str(out)!r}).acquire()\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    code, _ = forks.run("list", "methods", prelude=prelude)
    assert code == -signal.SIGKILL and (out / LOCK_NAME).is_file()
    with FolderLock(out) as lock:  # the OS let go of the dead process's lock
        assert lock.held


def test_a_locked_suite_folder_refuses_a_second_suite(tmp_path, capsys):
    root = tmp_path / "suite"
    root.mkdir()
    suite = tmp_path / "s.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "base": "fashion_mnist/_base",
                "out_dir": str(root),
                "teacher": {"name": "resnet8", "checkpoint": str(suite)},
                "students": ["resnet8"],
                "methods": [{"label": "CE", "method": {"name": "vanilla"}}],
            }
        )
    )
    with FolderLock(root, "suite folder"):
        line = one_error_line(capsys, ["suite", str(suite)])
        assert "in use by another ckd process" in line and "suite folder" in line
    assert os.listdir(root) == [LOCK_NAME]  # no suite.yaml, no run


# --- 5: a new run needs an absent or empty folder, or exactly a ckd run ---------------------


def test_a_folder_holding_other_files_is_never_written_into(tmp_path, cfg_file, capsys):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.tex").write_text("\\section{}")
    (mine / "sub" / "results.csv").write_text("a,b\n")
    before = snapshot(mine)
    line = one_error_line(capsys, ["train", str(cfg_file), f"run.out_dir={mine}"])
    assert "holds files that are not a ckd run's ('sub', 'thesis.tex')" in line
    line = one_error_line(capsys, ["train", str(cfg_file), f"run.out_dir={mine}", "--resume"])
    assert "no run in" in line
    assert snapshot(mine) == before


def test_dot_dot_root_and_empty_out_dirs_are_refused(tmp_path, cfg_file, capsys, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path / "a" / "b")
    before = snapshot(tmp_path / "a")
    line = one_error_line(capsys, ["train", str(cfg_file), "run.out_dir=.."])
    assert "holds files that are not a ckd run's" in line and "notes.txt" in line
    assert snapshot(tmp_path / "a") == before
    line = one_error_line(capsys, ["train", str(cfg_file), "run.out_dir=''"])
    assert "run.out_dir: an empty path" in line
    assert os.listdir(tmp_path / "a" / "b") == []
    assert "not a ckd run's" in (folder_problem(Path("/"), resume=False) or "")
    assert "no run in /" in (folder_problem(Path("/"), resume=True) or "")


def test_a_run_whose_last_pt_was_deleted_keeps_its_best_pt(tmp_path, cfg_file, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(cfg_file.read_text())
    save_atomic({"format": "ckd/1", "step": 3}, out / "best.pt")
    before = snapshot(out)
    for extra in ([], ["--resume"]):
        line = one_error_line(capsys, ["train", str(cfg_file), *extra])
        assert "holds best.pt but no last.pt (deleted?)" in line
    assert snapshot(out) == before


def test_a_checkpoint_missing_entries_is_one_line(tmp_path, cfg_file, capsys):
    out = tmp_path / "run"
    out.mkdir()
    config = yaml.safe_load(cfg_file.read_text())
    save_atomic({"format": "ckd/1", "config": config, "step": 3}, out / "last.pt")
    line = one_error_line(capsys, ["train", str(cfg_file), "--resume"])
    assert f"{out / 'last.pt'} lacks model, method, optimizer, scaler, rng" in line


def test_a_bad_start_removes_the_folder_it_made(tmp_path, cfg_file, capsys):
    out = tmp_path / "new" / "deeper" / "run"
    line = one_error_line(
        capsys, ["train", str(cfg_file), f"run.out_dir={out}", "data.train_subset=5000"]
    )
    assert "data.train_subset=5000" in line and not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    one_error_line(capsys, ["train", str(cfg_file), f"run.out_dir={empty}", "data.test_subset=999"])
    assert empty.is_dir() and os.listdir(empty) == []


# --- 10: divergence: one line, exit 3, the last good checkpoint kept ------------------------

NAN_AT_STEP_5 = """
import ckd.methods.distiller as b
_train = b.Distiller.forward_train
def forward_train(self, *a, **k):
    logits, terms = _train(self, *a, **k)
    if k["step"] == 4:  # the 5th step: epoch 2, step 2 of 3
        terms["kd"] = terms["kd"] * float("nan")
    return logits, terms
b.Distiller.forward_train = forward_train
"""


def test_a_nan_loss_term_stops_the_run_naming_epoch_step_and_term(forks, kd_config, tmp_path):
    out = tmp_path / "run"
    code, log = forks.run("train", str(kd_config), f"run.out_dir={out}", prelude=NAN_AT_STEP_5)
    assert code == 3, log
    line = log.strip().splitlines()[-1]
    assert line == (
        "ckd: error: training diverged: a non-finite loss term (kd) at epoch 2, step 2 of 3; "
        f"the last checkpoint, {out / 'last.pt'} (at epoch 1, step 3 of 3), is kept"
    ), log
    last = load_checkpoint(out / "last.pt")
    assert last["step"] == 3 and all(torch.isfinite(v).all() for v in last["model"].values())
    assert [r["epoch"] for r in read_metrics(out)] == [1]
    assert not (out / "result.json").exists()


NAN_EVALUATION = """
import ckd.tasks.classification as c
_evaluate, calls = c.Classification.evaluate, []
def evaluate(self, model):
    calls.append(1)
    metrics = _evaluate(self, model)
    return {**metrics, "top1": float("nan")} if len(calls) == 2 else metrics
c.Classification.evaluate = evaluate
"""


def test_a_nan_evaluation_is_never_best_nor_finished(forks, kd_config, tmp_path):
    out = tmp_path / "run"
    argv = ("train", str(kd_config), f"run.out_dir={out}", "method.name=vanilla", "teacher=null")
    code, log = forks.run(*argv, prelude=NAN_EVALUATION)
    assert code == 3, log
    assert "the evaluation at epoch 2, step 3 of 3 gave a non-finite top1" in log
    assert load_checkpoint(out / "best.pt")["step"] == 3  # epoch 1's, not the nan
    assert load_checkpoint(out / "last.pt")["step"] == 3
    assert not (out / "result.json").exists()


def test_the_non_finite_flag_needs_no_host_sync_per_step(monkeypatch):
    window = Window()
    good, bad = torch.tensor(1.0), torch.tensor(float("inf"))
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, lambda *a: pytest.fail("a host sync"))
    for step in range(10):
        window.add({"ce": good, "kd": bad if step in (6, 8) else good}, {}, 4, step)
    monkeypatch.undo()
    assert window.first_bad() == (6, ["kd"])


# --- 11: bookkeeping over processes; stale temporaries and partial builds cleaned ------------


def test_wall_time_counts_every_process_and_a_finished_run_is_left_alone(
    forks, kd_config, tmp_path
):
    out = tmp_path / "run"
    argv = ("train", str(kd_config), f"run.out_dir={out}")
    # the first process's clock runs 1000x fast: its share dwarfs what the second one takes
    fast_clock = "import time\n_pc = time.perf_counter\ntime.perf_counter = lambda: _pc() * 1000\n"
    code, log = forks.run(*argv, "--stop-after", "1", prelude=fast_clock)
    assert code == 0, log
    first = load_checkpoint(out / "last.pt")["seconds"]
    start = time.monotonic()
    code, log = forks.run(*argv, "--resume")
    second = time.monotonic() - start
    assert code == 0, log
    wall = json.loads((out / "result.json").read_text())["wall_time_s"]
    assert first <= wall <= first + second
    before = snapshot(out, lock=False)
    code, log = forks.run(*argv, "--resume")
    assert code == 0 and "finished already; nothing to do" in log
    assert snapshot(out, lock=False) == before  # result.json (time, images/s) not rewritten


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_removed(forks, kd_config, tmp_path):
    out = tmp_path / "run"
    argv = ("train", str(kd_config), f"run.out_dir={out}")
    assert forks.run(*argv, "--stop-after", "1")[0] == 0
    dead, alive = dead_pid(), os.getpid()
    names = {
        f".last.pt.{dead}.tmp": False,
        f".metrics.jsonl.{dead}.tmp": False,
        f".last.pt.{alive}.tmp": True,  # a live process's (it would not be ckd's, here)
        f".notes.txt.{dead}.tmp": True,  # not a name ckd writes
    }
    for name in names:
        (out / name).write_bytes(b"partial")
    code, log = forks.run(*argv, "--resume")
    assert code == 0, log
    assert {n: (out / n).exists() for n in names} == names


def test_partial_cache_builds_of_dead_processes_are_removed(tmp_path):
    dead, alive, host = dead_pid(), os.getpid(), socket.gethostname()
    cache = tmp_path / "cache"
    folders = {
        f".cache.building-{dead}": False,  # an earlier release's name
        f".cache.building-{host}-{dead}": False,
        f".cache.building-elsewhere-{dead}": True,  # another host's: its pid says nothing here
        f".cache.building-{host}-{alive}": True,  # still building
        f".other.building-{host}-{dead}": True,  # another cache's
    }
    for name in folders:
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "logits.npy", np.zeros(3, np.float16))
    odd = tmp_path / f".cache.building-{host}-{dead + 1 if dead + 1 != alive else dead + 2}"
    odd.mkdir()
    (odd / "thesis.tex").write_text("not a cache's file")  # never deleted
    removed = remove_stale_builds(cache)
    assert sorted(p.name for p in removed) == sorted(n for n, keep in folders.items() if not keep)
    assert {n: (tmp_path / n).exists() for n in folders} == folders
    assert (odd / "thesis.tex").is_file()


@pytest.mark.slow
def test_a_cache_build_killed_midway_is_cleaned_and_rebuilt_the_same(forks, kd_config, tmp_path):
    argv = ("cache", "build", str(kd_config), "data.loader=fast", "optim.epochs=3")
    code, log = forks.run(*argv, "--out", str(tmp_path / "ref"))
    assert code == 0, log
    code, _ = forks.run(*argv, "--out", str(tmp_path / "cache"), fault="inside:cache-build@2")
    assert code == -signal.SIGKILL
    assert not (tmp_path / "cache").exists() and list(tmp_path.glob(".cache.building-*"))
    code, log = forks.run(*argv, "--out", str(tmp_path / "cache"))
    assert code == 0, log
    assert not list(tmp_path.glob(".cache.building-*"))
    ref, new = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("ref", "cache"))
    assert new["checksums"] == ref["checksums"]


# --- leftovers: metrics files, foreign run folders in reports ------------------------------


def test_read_metrics_skips_a_torn_last_line_and_names_a_damaged_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "step": 3}\n{"epoch": 2, "st')
    assert read_metrics(path) == [{"epoch": 1, "step": 3}]
    path.write_text('{"epoch": 1, "step": 3}\n{"epoch": 2, "st\n{"epoch": 3, "step": 9}\n')
    with pytest.raises(DataError, match="line 2 is not a metrics row"):
        read_metrics(path)
    path.write_text('{"epoch": 1, "step": 3}\n{"epoch": 2, "step": 6}\n{"epoch": 3, "st')
    log = MetricsLog(tmp_path, tensorboard=False, resume_step=3, unit=3)
    assert log.rows == [{"epoch": 1, "step": 3}]
    assert path.read_text() == '{"epoch": 1, "step": 3}\n'
    assert not list(tmp_path.glob(".*.tmp"))
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n')  # rows of an earlier release: epochs only
    assert MetricsLog(tmp_path, tensorboard=False, resume_step=3, unit=3).rows == [{"epoch": 1}]


def test_reports_and_suites_read_run_configs_safely(tmp_path, reference, capsys):
    from ckd.bench.suite import _train
    from ckd.config import config_from_dict

    good, torn, foreign = (tmp_path / n for n in ("good", "torn", "foreign"))
    for run in (good, torn, foreign):
        run.mkdir()
        for name in ("config.yaml", "result.json"):
            shutil.copy(reference / name, run / name)
    text = (reference / "config.yaml").read_text()
    (torn / "config.yaml").write_text(text[: len(text) // 2] + "\n  - [unclosed")
    (foreign / "config.yaml").write_text("!!python/object/apply:os.system [echo hi]\n")
    rows = find_runs([tmp_path])
    assert [r["run_dir"] for r in rows] == [str(good)]
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 2 and all(n.startswith("ckd: note: skipped ") for n in notes), notes
    cfg = config_from_dict(yaml.safe_load(text))
    cfg.run.out_dir = str(torn)
    with pytest.raises(ConfigError, match="config.yaml: not a run's config"):
        _train(cfg)
