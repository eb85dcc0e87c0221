"""Issue 21: the surfaces added after issue 12 (folder datasets, export, make-folder, the teacher
cache's --force, config files, the Python API) against a careless or hostile user: real files,
real symlinks, FIFOs and /dev/zero, real signals. Nothing a user made is deleted or overwritten
(bytes hashed before and after), no input hangs, every bad input is one line.

Cases 2 and 8 (DataLoader workers) are in ``tests/engine/test_workers.py``; case 10's
property-based test in ``tests/test_api_arguments.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

import ckd
import ckd.faults as faults
from ckd.cli import main
from ckd.config import load_config
from ckd.data import make_fake_image_folder, resolve_dataset
from ckd.data.folder import ImageReadError
from ckd.engine.checkpoint import load_checkpoint, save_atomic
from ckd.errors import USER_ERRORS, CheckpointError, ConfigError, DataError, RunDirError
from ckd.models import create_model
from ckd.tasks.classification import DataConfig
from tests.conftest import tiny_config
from tests.helpers import run_bad

pytestmark = pytest.mark.usefixtures("one_thread")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links not followed) with the sha256 of its bytes, and every
    link with its target."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = sha(p)
    return out


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the block takes longer than ``seconds``."""

    def late(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    before = signal.signal(signal.SIGALRM, late)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def one_line(error: BaseException) -> str:
    text = str(error)
    assert isinstance(error, USER_ERRORS), repr(error)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


# --- 1: symbolic links in a folder dataset -------------------------------------------------


def folder_train(root: Path) -> tuple[list[str], list[int]]:
    spec = resolve_dataset(DataConfig.from_dict({"name": "folder", "root": str(root)}))
    train = spec.build(None, True, False, False)
    return train.paths, train.targets


def refused_scan(root: Path, match: str) -> str:
    with within(20), pytest.raises(DataError) as e:
        folder_train(root)
    line = one_line(e.value)
    assert match in line, line
    return line


def test_links_that_loop_or_cross_classes_are_refused_in_one_line(tmp_path):
    def fresh(name: str) -> Path:
        return make_fake_image_folder(tmp_path / name, per_class=3, val_per_class=1, size=8)

    root = fresh("dot")  # Bag repeated ~41 times before
    os.symlink(".", root / "train" / "class_0" / "loop")
    refused_scan(root, "class_0/loop is a link to")
    root = fresh("up")  # every other class's images labelled class 0 before
    os.symlink("..", root / "train" / "class_0" / "up")
    refused_scan(root, "a folder it is inside of (a loop)")
    root = fresh("two")  # all the memory before
    os.symlink(".", root / "train" / "class_0" / "a")
    os.symlink(".", root / "train" / "class_0" / "b")
    refused_scan(root, "(a loop)")
    root = fresh("root")
    os.symlink("/", root / "train" / "class_1" / "everything")
    refused_scan(root, "is a link to /, a folder it is inside of")
    root = fresh("other")  # class 1's images would be class 0's too
    os.symlink("../class_1", root / "train" / "class_0" / "ones")
    refused_scan(root, "which class class_0 reaches too (through")
    root = fresh("file")
    os.symlink("../class_2/0.png", root / "train" / "class_0" / "z.png")
    refused_scan(root, "an image belongs to one class")
    root = fresh("leak")  # a test image that is a training image
    os.symlink("../../train/class_1/1.png", root / "val" / "class_1" / "x.png")
    refused_scan(root, "the train split reaches too (through")
    root = fresh("dangling")
    os.symlink("gone.png", root / "train" / "class_0" / "z.png")
    refused_scan(root, "is a link to nothing")


def test_links_inside_a_class_or_to_elsewhere_count_each_real_image_once(tmp_path):
    root = make_fake_image_folder(tmp_path / "d", per_class=3, val_per_class=1, size=8)
    plain = folder_train(root)
    c0 = root / "train" / "class_0"
    os.symlink("0.png", c0 / "again.png")  # a second name of one image
    (c0 / "sub").mkdir()
    os.symlink("../sub", c0 / "same_sub")  # a second way into one folder
    (c0 / "sub" / "s.png").write_bytes((c0 / "1.png").read_bytes())
    elsewhere = tmp_path / "disk" / "more"  # a class's images linked in from another disk
    elsewhere.mkdir(parents=True)
    (elsewhere / "e.png").write_bytes((c0 / "2.png").read_bytes())
    os.symlink(elsewhere, root / "train" / "class_2" / "more")
    paths, targets = folder_train(root)
    assert len(paths) == len(plain[0]) + 2  # sub/s.png and more/e.png, once each
    assert len({os.path.realpath(p) for p in paths}) == len(paths)
    assert targets.count(0) == 4 and targets.count(2) == 4
    assert str(c0 / "again.png") not in paths and str(c0 / "0.png") in paths


def test_export_of_a_run_whose_folder_loops_is_one_line(tmp_path, capsys):
    root = make_fake_image_folder(tmp_path / "d", per_class=4, val_per_class=1, size=8)
    out = tmp_path / "run"
    train_folder_run(root, out)
    ckpt = load_checkpoint(out / "last.pt")
    del ckpt["dataset"]  # as a run of an earlier release: the folder is read again
    save_atomic(ckpt, out / "old.pt")
    os.symlink(".", root / "train" / "class_0" / "a")
    os.symlink(".", root / "train" / "class_0" / "b")
    with within(30):
        line = run_bad(capsys, ["export", str(out / "old.pt"), "--format", "safetensors"])
    assert "(a loop)" in line
    assert not list(out.glob("old.safetensors*"))


def test_an_image_name_with_a_newline_stays_on_one_line(tmp_path):
    root = make_fake_image_folder(tmp_path / "d", per_class=2, val_per_class=1, size=8)
    bad = root / "train" / "class_1" / "a\nb.png"
    bad.write_bytes(b"not an image")
    spec = resolve_dataset(DataConfig.from_dict({"name": "folder", "root": str(root)}))
    train = spec.build(None, True, False, False)
    with pytest.raises(ImageReadError) as e:
        train[train.paths.index(str(bad))]
    line = one_line(e.value)
    assert repr(str(bad)) in line and "cannot identify image file" in line  # name and reason


# --- 3 and 7: export never writes over its source nor a file it did not make ---------------


def train_folder_run(root: Path, out: Path, *extra: str) -> None:
    argv = [
        "train", "folder/vanilla", f"data.root={root}", f"run.out_dir={out}", "optim.epochs=1",
        "data.batch_size=6", "data.num_workers=0", "run.tensorboard=false", "run.device=cpu",
        *extra,
    ]  # fmt: skip
    assert main(argv) == 0


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished folder run (resnet8, one epoch on 3 classes of 6 grey 8x8 images)."""
    tmp = tmp_path_factory.mktemp("run")
    root = make_fake_image_folder(tmp / "d", per_class=6, val_per_class=2, size=8, channels=1)
    train_folder_run(root, tmp / "run")
    return tmp / "run"


def export(run: Path, *extra: str) -> list[str]:
    return ["export", str(run), "--format", "safetensors", *extra]


def test_export_never_overwrites_its_source_or_a_file_it_did_not_make(run, tmp_path, capsys):
    before = tree(run)
    for target in ("last.pt", "best.pt", "config.yaml", "metrics.jsonl"):
        line = run_bad(capsys, export(run, "--out", str(run / target), "--force"))
        assert "export never writes over its source" in line or "not written by ckd export" in line
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"the user's own weights")
    (tmp_path / "notes.json").write_text("{}")
    mine_sha = sha(mine)
    line = run_bad(capsys, export(run, "--out", str(mine), "--force"))
    assert "--force replaces only export's own files, so nothing was overwritten" in line
    # a sidecar that names the file but not its bytes does not make it export's
    (tmp_path / "mine.safetensors.json").write_text(
        '{"format": "safetensors", "file": "mine.safetensors", "sha256": "0"}'
    )
    run_bad(capsys, export(run, "--out", str(mine), "--force"))
    run_bad(capsys, export(run, "--out", str(tmp_path / "notes"), "--force"))  # its sidecar
    assert sha(mine) == mine_sha and (tmp_path / "notes.json").read_text() == "{}"
    link = tmp_path / "link.safetensors"
    os.symlink(run / "last.pt", link)
    line = run_bad(capsys, export(run, "--out", str(link), "--force"))
    assert "is the checkpoint being exported" in line
    assert tree(run) == before
    # what export wrote, it may replace
    ours = tmp_path / "s.safetensors"
    assert main(export(run, "--out", str(ours))) == 0
    assert main(export(run, "--out", str(ours), "--force")) == 0
    (ours).unlink()  # a sidecar left without its model file is export's too
    assert main(export(run, "--out", str(ours), "--force")) == 0
    assert tree(run) == before


def test_export_outputs_that_are_folders_are_one_line(run, tmp_path, capsys, monkeypatch):
    before = tree(run)
    folder = tmp_path / "out"
    folder.mkdir()
    line = run_bad(capsys, export(run, "--out", str(folder)))
    assert "is a folder; give the file to write, e.g." in line and "last.safetensors" in line
    monkeypatch.chdir(folder)
    assert "the current folder" in run_bad(capsys, export(run, "--out", ".", "--force"))
    assert "the root folder" in run_bad(capsys, export(run, "--out", "/", "--force"))
    assert list(folder.iterdir()) == [] and tree(run) == before


def test_a_checkpoint_with_a_damaged_config_is_one_line(run, tmp_path, capsys):
    ckpt = load_checkpoint(run / "last.pt")
    cases = {
        "list.pt": {**ckpt, "config": [1, 2]},
        "string.pt": {**ckpt, "config": {**ckpt["config"], "student": "resnet8"}},
        "data.pt": {**ckpt, "config": {**ckpt["config"], "data": 3}},
        "dataset.pt": {**ckpt, "dataset": {"classes": 5}},
    }
    for name, content in cases.items():
        save_atomic(content, tmp_path / name)
        path = str(tmp_path / name)
        for argv in (["eval", path], export(Path(path), "--out", str(tmp_path / "x.st"))):
            if name == "dataset.pt" and argv[0] == "eval":
                continue  # eval reads the folder again: the dataset entry is export's
            line = run_bad(capsys, argv)
            assert "not a checkpoint of a ckd run" in line or "damaged" in line, line
        with pytest.raises(CheckpointError) as e:
            ckd.load_student(path)
        one_line(e.value)
    assert not (tmp_path / "x.st").exists()


def test_export_of_what_is_not_a_run_names_what_it_is(tmp_path, capsys):
    absent = tmp_path / "nonexistent"
    assert "does not exist" in run_bad(capsys, export(absent))
    line = run_bad(capsys, export(tmp_path))
    assert "is a folder without last.pt, not a run folder" in line
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.yaml").write_text("{}")
    assert "a run folder without last.pt yet" in run_bad(capsys, export(started))


# --- 4 and 7: `ckd cache build --force` replaces only a cache ckd marked ---------------------


@pytest.fixture(scope="module")
def kd_fast(tmp_path_factory, fake_fmnist) -> Path:
    tmp = tmp_path_factory.mktemp("kd")
    torch.manual_seed(0)
    torch.save({"model": create_model("resnet8", 10, 1).state_dict()}, tmp / "teacher.pt")
    cfg = tiny_config(
        fake_fmnist,
        tmp / "run",
        data={"loader": "fast", "train_subset": 32, "test_subset": 20},
        teacher={"name": "resnet8", "checkpoint": str(tmp / "teacher.pt")},
        method={"name": "kd"},
        optim={"epochs": 1},
    )
    (tmp / "kd.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "kd.yaml"


@pytest.mark.parametrize("name", ["logits.npy", "feat0.npy", "embedding.npy"])
def test_cache_force_keeps_a_users_array_files(kd_fast, tmp_path, capsys, name):
    mine = tmp_path / "arrays"
    mine.mkdir()
    (mine / name).write_bytes(b"\x93NUMPY my own results")
    before = tree(mine)
    line = run_bad(capsys, ["cache", "build", str(kd_fast), "--out", str(mine), "--force"])
    assert "no mark of a cache ckd made" in line and "nothing was deleted" in line
    assert tree(mine) == before


def test_cache_build_into_the_current_folder_is_refused_before_any_work(
    kd_fast, tmp_path, capsys, monkeypatch
):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with within(20):
        line = run_bad(capsys, ["cache", "build", str(kd_fast), "--out", "."])
    assert "the current folder" in line
    assert list(empty.iterdir()) == [] and list(tmp_path.iterdir()) == [empty]


# --- 5 and 7: make-folder --force replaces only the files it made ---------------------------


def make_folder(source: Path, out: Path | str, *extra: str) -> list[str]:
    return [
        "make-folder", "--out", str(out), "--source", str(source), "--train-per-class", "1",
        "--val-per-class", "1", *extra,
    ]  # fmt: skip


def test_make_folder_force_keeps_anything_it_did_not_write(fake_fmnist, tmp_path, capsys):
    out = tmp_path / "fm"
    assert main(make_folder(fake_fmnist, out)) == 0
    assert main(make_folder(fake_fmnist, out, "--force")) == 0  # its own: replaced
    made = tree(out)
    for where in ("train/Bag/mine.png", "val/Coat/notes.txt", "train/extra/x.png", "mine.txt"):
        user = out / where
        user.parent.mkdir(exist_ok=True)
        user.write_bytes(b"the user's bytes")
        before = tree(out)
        line = run_bad(capsys, make_folder(fake_fmnist, out, "--force"))
        assert f"{user}, which ckd make-folder did not write" in line or (
            "a folder ckd make-folder did not write" in line
        ), line
        assert "nothing was deleted" in line and tree(out) == before
        user.unlink()
        if user.parent != out and not any(user.parent.iterdir()):
            user.parent.rmdir()
    assert tree(out) == made
    image = next((out / "train" / "Bag").iterdir())
    image.write_bytes(image.read_bytes() + b"edited")  # an image the user changed
    before = tree(out)
    line = run_bad(capsys, make_folder(fake_fmnist, out, "--force"))
    assert "changed since ckd make-folder wrote it" in line and tree(out) == before
    image.unlink()
    os.symlink(tmp_path, image)  # a link the user put there
    line = run_bad(capsys, make_folder(fake_fmnist, out, "--force"))
    assert "a link ckd make-folder did not make" in line and image.is_symlink()
    # an earlier release's marker (plain text) lists nothing: refused, not trusted
    old = tmp_path / "old"
    (old / "train").mkdir(parents=True)
    (old / ".ckd-make-folder").write_text("written by ckd make-folder\n")
    (old / "train" / "x.png").write_bytes(b"?")
    line = run_bad(capsys, make_folder(fake_fmnist, old, "--force"))
    assert "lists no files" in line and (old / "train" / "x.png").read_bytes() == b"?"


def test_make_folder_into_the_current_folder_is_one_line(
    fake_fmnist, tmp_path, capsys, monkeypatch
):
    empty = tmp_path / "here"
    empty.mkdir()
    monkeypatch.chdir(empty)
    for out in (".", "./", "..", "/"):
        line = run_bad(capsys, make_folder(fake_fmnist, out, "--force"))
        assert "folder" in line
    assert list(empty.iterdir()) == [] and list(tmp_path.iterdir()) == [empty]


# --- 6: `_base_` reads only small regular files --------------------------------------------


@pytest.mark.parametrize("kind", ["/dev/zero", "/dev/urandom", "fifo", "big", "folder"])
def test_a_base_that_is_not_a_small_file_is_one_line_at_once(tmp_path, kind):
    target = {"/dev/zero": Path("/dev/zero"), "/dev/urandom": Path("/dev/urandom")}.get(kind)
    if kind == "fifo":
        target = tmp_path / "pipe.yaml"
        os.mkfifo(target)  # nothing ever writes to it: reading it would wait for ever
    elif kind == "big":
        target = tmp_path / "big.yaml"
        target.write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    elif kind == "folder":
        target = tmp_path / "sub"
        target.mkdir()
    if target is None or not target.exists():
        pytest.skip(f"{kind} is not on this machine")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"_base_: {target}\n")
    with within(10), pytest.raises(ConfigError) as e:
        load_config(cfg)
    line = one_line(e.value)
    assert str(target) in line
    assert "not a regular file" in line or "bytes" in line or "a folder" in line


# --- 9: advice only where something can be continued ---------------------------------------


def test_sigterm_during_a_runs_teacher_cache_build_gives_no_resume_advice(
    kd_fast, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(faults, "_passed", {})
    monkeypatch.setenv("CKD_FAULT", "inside:cache-build")
    monkeypatch.setenv("CKD_FAULT_SIGNAL", "TERM")
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["train", str(kd_fast), f"run.out_dir={out}", f"run.teacher_cache={cache}"]
    assert main(argv) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "ckd: stopped by SIGTERM before the run started; nothing was kept (run the command "
        "again to start it)"
    ]
    assert not out.exists() and list(tmp_path.iterdir()) == []  # the partial cache went too
    monkeypatch.setattr(faults, "_passed", {})
    assert main(["cache", "build", str(kd_fast), "--out", str(cache)]) == 143
    assert capsys.readouterr().err.strip() == "ckd: stopped by SIGTERM"
    assert list(tmp_path.iterdir()) == []


# --- 10 and 13: the API's own arguments, and errors in the API's terms ---------------------


def test_the_apis_arguments_are_checked_and_its_errors_name_its_options(
    fake_fmnist, tmp_path, capsys
):
    cfg = tiny_config(fake_fmnist, tmp_path / "run", data={"train_subset": 32, "test_subset": 20})
    bad = [
        (ckd.train, (None,), {}, "config=None"),
        (ckd.train, (b"c.yaml",), {}, "config=b'c.yaml'"),
        (ckd.train, (cfg,), {"overrides": [1, 2]}, "overrides=[1, 2]"),
        (ckd.train, (cfg,), {"stop_after": "1"}, "stop_after='1'"),
        (ckd.train, (cfg,), {"stop_after": -1}, "stop_after=-1"),
        (ckd.load_student, (None,), {}, "source=None"),
        (ckd.evaluate, (tmp_path,), {"subset": "5"}, "subset='5'"),
        (ckd.evaluate, (tmp_path,), {"amp": 16}, "amp=16"),
        (ckd.build_cache, (cfg,), {"force": "yes"}, "force='yes'"),
    ]
    for function, args, kwargs, named in bad:
        with pytest.raises(ConfigError) as e:
            function(*args, **kwargs)
        assert one_line(e.value).startswith(named)
    assert not (tmp_path / "run").exists()  # nothing was written
    assert "--stop-after must be >= 1" in run_bad(capsys, ["train", "x", "--stop-after", "-1"])
    ckd.train(cfg, quiet=True)
    with pytest.raises(RunDirError) as e:  # the README's example, run twice
        ckd.train(cfg, quiet=True)
    assert "pass resume=True to continue it" in one_line(e.value) and "--" not in str(e.value)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert "pass --resume to continue it" in run_bad(capsys, ["train", str(path)])
    run = tmp_path / "run"
    with pytest.raises(ConfigError) as e:
        ckd.evaluate(run, device="gpu9")
    assert one_line(e.value).startswith("device: unknown device 'gpu9'")
    assert "--device: unknown device 'gpu9'" in run_bad(
        capsys, ["eval", str(run), "--device", "gpu9"]
    )


# --- 12 and 16: a run is evaluated in its own precision; the header says what it computes in -


def test_eval_uses_the_runs_own_precision_and_says_which(
    fake_fmnist, tmp_path, monkeypatch, capsys
):
    lines: list[str] = []
    cfg = tiny_config(fake_fmnist, tmp_path / "run", data={"train_subset": 32, "test_subset": 20})
    run = ckd.train(cfg, echo=lines.append)  # run.amp=auto on a CPU without native bf16
    assert lines[1] == (
        "precision fp32 (run.amp=auto: this CPU has no native bf16), memory format "
        "channels_last (run.channels_last=auto: faster on cpu)"
    )
    measured = ckd.evaluate(run.out_dir)
    assert measured["precision"] == "fp32 (the run's run.amp=auto on this machine)"
    assert measured["top1"] == run.result["last_top1"]
    monkeypatch.setenv("CKD_CPU_BF16", "1")  # the same run, evaluated on a CPU with bf16
    measured = ckd.evaluate(run.out_dir)
    assert measured["precision"] == "bf16 (the run's run.amp=auto on this machine)"
    assert measured == {**ckd.evaluate(run.out_dir, amp="bf16"), "precision": measured["precision"]}
    assert ckd.evaluate(run.out_dir, amp="none")["precision"] == "fp32 (as asked)"
    assert main(["eval", str(run.out_dir)]) == 0
    assert "precision bf16 (the run's run.amp=auto on this machine)" in capsys.readouterr().out


# --- 11 and 15: messages, and --print-config as a dry run ------------------------------------


def test_a_teacher_checkpoint_naming_a_folder_says_so(fake_fmnist, tmp_path, capsys, monkeypatch):
    run = tmp_path / "teacher_run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    cfg = tiny_config(
        fake_fmnist, tmp_path / "out", teacher={"name": "resnet8"}, method={"name": "kd"}
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    line = run_bad(capsys, ["train", str(path), f"teacher.checkpoint={run}"])
    assert f"'{run}' is a folder, not a checkpoint file; its checkpoint is" in line
    # --print-config: the config, then a note on what is missing, exit 0
    monkeypatch.chdir(tmp_path)
    missing = "teacher.checkpoint=runs/fashion_mnist/teacher/seed0/last.pt"
    assert main(["train", str(path), missing, "--print-config"]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["teacher"]["checkpoint"].endswith("seed0/last.pt")
    assert captured.err.count("\n") == 1 and captured.err.startswith(
        "ckd: note: teacher.checkpoint"
    )
    # after `make demo`, the line names the demo's teacher
    demo = tmp_path / "runs" / "demo" / "teacher"
    demo.mkdir(parents=True)
    (demo / "last.pt").write_bytes(b"")
    line = run_bad(capsys, ["train", str(path), missing])
    assert line.endswith(
        "`make demo` trained one: add teacher.checkpoint=runs/demo/teacher/last.pt"
    )
    assert not (tmp_path / "out").exists()
