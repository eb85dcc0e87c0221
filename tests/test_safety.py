"""Issue 12's reliability items outside the training loop: nothing deleted that ckd did not make,
no code run from a data folder, damaged caches / checkpoints / data refused in one line, and
bad values refused before anything is built or written."""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import ckd.data as D
from ckd.cli import main, parse_args
from ckd.data import imagefolder
from ckd.data.base import DatasetInfo
from ckd.data.safe_pickle import load_data_pickle
from ckd.data.synthetic import _dump_py2
from ckd.engine.cache import open_cache
from ckd.engine.checkpoint import load_checkpoint, save_atomic
from ckd.errors import CheckpointError, ConfigError, DataError, one_line
from ckd.methods import METHODS
from ckd.models import create_model, load_weights
from tests.conftest import tiny_config

SMALL = {"train_subset": 96, "test_subset": 50}


def one_error_line(capsys, argv: list[str]) -> str:
    """Run the CLI; assert exit 2 and exactly one ``ckd: error:`` line; return it."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ckd: error: "), err
    return lines[0]


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


class RunsCode:
    """Unpickling this runs ``touch <marker>`` (what a crafted data file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- 1: `ckd cache build --force` deletes only a cache ---------------------------------------


@pytest.fixture
def cache_config(tmp_path, fake_fmnist) -> Path:
    """A KD config on the fast path with a (random) resnet8 teacher, for `ckd cache build`."""
    teacher = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    torch.save({"model": create_model("resnet8", 10, 1).state_dict()}, teacher)
    cfg = tiny_config(
        fake_fmnist,
        tmp_path / "run",
        data={"loader": "fast", **SMALL},
        teacher={"name": "resnet8", "checkpoint": str(teacher)},
        method={"name": "kd"},
        optim={"epochs": 3},
    )
    return write_config(tmp_path / "kd.yaml", cfg)


def test_cache_force_refuses_a_folder_that_is_not_a_cache(tmp_path, cache_config, capsys):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.tex").write_text("\\chapter{One}")
    (mine / "sub" / "results.csv").write_text("a,b\n")
    build = ["cache", "build", str(cache_config), "--out", str(mine)]
    line = one_error_line(capsys, [*build, "--force"])
    assert f"--force: {mine} holds " in line and "nothing was deleted" in line
    line = one_error_line(capsys, build)  # without --force: no advice that leads to it
    assert "not a teacher cache" in line and "name a new folder" in line
    assert "empty folder" not in line and "--force" not in line
    assert (mine / "thesis.tex").read_text() == "\\chapter{One}"
    assert (mine / "sub" / "results.csv").read_text() == "a,b\n"
    # a cache's file names beside a foreign one, or a manifest that is not a ckd cache's
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "logits.npy").write_bytes(b"x")
    (fake / "notes.md").write_text("keep")
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"format": "someone-else/1"}')
    for folder in (fake, other):
        line = one_error_line(
            capsys, ["cache", "build", str(cache_config), "--out", str(folder), "--force"]
        )
        assert "nothing was deleted" in line
    assert (fake / "notes.md").read_text() == "keep" and (fake / "logits.npy").exists()
    assert (other / "manifest.json").exists()


def test_cache_force_replaces_a_cache_or_a_partial_build(tmp_path, cache_config, capsys):
    out = tmp_path / "cache"
    build = ["cache", "build", str(cache_config), "--out", str(out)]
    assert main(build) == 0
    assert main(build) == 0 and "up to date" in capsys.readouterr().out
    (out / "feat7.npy").write_bytes(b"old")  # a file of an older build with features
    assert main([*build, "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".ckd-teacher-cache",
        "logits.npy",
        "manifest.json",
    ]
    assert open_cache(out, json.loads((out / "manifest.json").read_text()), 3) is not None
    partial = tmp_path / "partial"  # array files beside ckd's mark: a build ckd made
    partial.mkdir()
    (partial / ".ckd-teacher-cache").write_text("")
    (partial / "logits.npy").write_bytes(b"half")
    (partial / "feat0.npy").write_bytes(b"half")
    assert main(["cache", "build", str(cache_config), "--out", str(partial), "--force"]) == 0
    assert sorted(p.name for p in partial.iterdir()) == [
        ".ckd-teacher-cache",
        "logits.npy",
        "manifest.json",
    ]


# --- 6: teacher-cache integrity ---------------------------------------------------------------


def test_a_cache_tampered_in_a_later_epoch_stops_the_run_in_one_line(
    tmp_path, cache_config, capsys
):
    out = tmp_path / "cache"
    assert main(["cache", "build", str(cache_config), "--out", str(out)]) == 0
    logits = np.load(out / "logits.npy", mmap_mode="r+")
    logits[1] *= np.float16(-3)  # epoch 2 of 3, as in the issue
    logits.flush()
    del logits
    line = one_error_line(
        capsys, ["train", str(cache_config), f"run.teacher_cache={out}", "method.name=kd"]
    )
    assert "logits of epoch 2 do not match the checksum" in line
    run = tmp_path / "run"
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # epoch 1 trained, and kept


def test_a_cache_whose_manifest_disagrees_with_its_arrays_is_refused(
    tmp_path, cache_config, capsys
):
    out = tmp_path / "cache"
    assert main(["cache", "build", str(cache_config), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["logits"][2] += 1  # 11 classes said, 10 stored
    manifest["num_classes"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    line = one_error_line(capsys, ["train", str(cache_config), f"run.teacher_cache={out}"])
    assert "logits.npy holds float16 [3, 96, 10] but the manifest says float16 [3, 96, 11]" in line
    assert not (tmp_path / "run").exists()
    manifest["logits"] = "three"  # malformed
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="malformed"):
        open_cache(out, {}, 1)


# --- 2: no data folder can run code or switch a check off -----------------------------------


@pytest.fixture
def cifar(tmp_path) -> Path:
    return D.make_fake_cifar(tmp_path / "cifar", num_classes=10, n_train=20, n_test=10)


def test_a_malicious_cifar_pickle_is_refused_without_running(tmp_path, cifar, monkeypatch, capsys):
    marker = tmp_path / "ran"
    folder = cifar / "cifar-10-batches-py"
    (folder / "test_batch").write_bytes(pickle.dumps({"data": RunsCode(marker)}, protocol=2))
    (folder / "CKD_SYNTHETIC").write_text("skip md5\n")  # no longer means anything
    with pytest.raises(DataError, match="md5"):  # default: md5 first
        D.build_dataset("cifar10", str(cifar), train=False)
    with pytest.raises(DataError, match="refused global posix.system"):
        D.build_dataset("cifar10", str(cifar), train=False, verify=False)
    # even a folder that passed md5 cannot run code
    monkeypatch.setattr("ckd.data.cifar.check_integrity", lambda *a, **k: True)
    with pytest.raises(DataError, match="not a CIFAR data file"):
        D.build_dataset("cifar10", str(cifar), train=False)
    assert not marker.exists()
    # through the CLI: one line, nothing run, nothing written
    cfg = tiny_config(cifar, tmp_path / "run", data={"name": "cifar10"})
    line = one_error_line(capsys, ["train", str(write_config(tmp_path / "c.yaml", cfg))])
    assert "test_batch" in line and not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "payload",
    [
        {"data": np.array([1, "a"], dtype=object)},  # object arrays unpickle objects
        {"data": np.zeros(3, dtype=[("a", "u1"), ("b", "f4")])},  # structured dtype
        {"x": np.float64(1.0)},  # a NumPy scalar: another global
        {"x": {1, 2}},  # a set: not in the format
    ],
)
def test_the_cifar_reader_admits_plain_data_and_numeric_arrays_only(tmp_path, payload):
    path = tmp_path / "f"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        load_data_pickle(path)
    path.write_bytes(pickle.dumps({"a": np.arange(6, dtype=">f4").reshape(2, 3)}, protocol=4))
    assert np.array_equal(load_data_pickle(path)["a"], np.arange(6).reshape(2, 3))


def test_the_cifar_reader_reads_python_2_pickles_as_the_real_files_hold_them(tmp_path):
    """The official files: protocol 2 from Python 2 (numpy.core.multiarray, byte strings, the
    dtype's flags as ints): what ckd's generated files hold, rewritten that way."""
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    _dump_py2({b"data": data, b"labels": [3, 7], b"batch_label": b"x"}, tmp_path / "a")
    raw = (tmp_path / "a").read_bytes()
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    raw = raw.replace(b"X\x02\x00\x00\x00u1", b"U\x02u1").replace(b"X\x01\x00\x00\x00|", b"U\x01|")
    raw = raw.replace(b"\x89\x88\x87", b"K\x00K\x01\x87")  # ('u1', 0, 1)
    assert b"numpy.core.multiarray" in raw and b"U\x02u1" in raw and b"K\x00K\x01\x87" in raw
    (tmp_path / "b").write_bytes(raw)
    entry = load_data_pickle(tmp_path / "b")
    assert entry["labels"] == [3, 7] and entry["batch_label"] == "x"
    assert entry["data"].dtype == np.uint8 and np.array_equal(entry["data"], data)


def test_a_cifar_folder_failing_md5_is_one_line(tmp_path, cifar, capsys):
    cfg = tiny_config(cifar, tmp_path / "run", data={"name": "cifar10"})
    line = one_error_line(capsys, ["train", str(write_config(tmp_path / "c.yaml", cfg))])
    assert "data_batch_1: its md5 is not the published one" in line
    assert main(["train", str(tmp_path / "c.yaml"), "data.verify=false", "optim.epochs=1"]) == 0


# --- 8: damaged files and odd values give one line ------------------------------------------


@pytest.fixture
def stopped_run(tmp_path, fake_fmnist) -> Path:
    """A config whose run stopped after epoch 1 of 2 (last.pt and best.pt of epoch 1)."""
    cfg = write_config(tmp_path / "c.yaml", tiny_config(fake_fmnist, tmp_path / "run", data=SMALL))
    assert main(["train", str(cfg), "--stop-after", "1"]) == 0
    return cfg


def test_a_damaged_last_pt_on_resume_is_one_line_naming_an_intact_best_pt(
    tmp_path, stopped_run, capsys
):
    last = tmp_path / "run" / "last.pt"
    good = last.read_bytes()
    t = load_checkpoint(last)["model"]["fc.weight"]
    at = good.find(t.numpy().tobytes())
    assert at > 0
    flipped = bytearray(good)
    flipped[at + 5] ^= 0x10  # still decodes: only the checksum can tell
    damaged = {
        "truncated": good[: len(good) // 2],
        "zero-byte": b"",
        "text": b"not a checkpoint\n",
        "bit-flipped": bytes(flipped),
    }
    for kind, content in damaged.items():
        last.write_bytes(content)
        line = one_error_line(capsys, ["train", str(stopped_run), "--resume"])
        assert line.startswith(f"ckd: error: --resume: {last}"), kind
        assert "best.pt (epoch 1) is intact" in line, kind
    torch.save({"model": load_checkpoint(tmp_path / "run" / "best.pt")["model"]}, last)
    line = one_error_line(capsys, ["train", str(stopped_run), "--resume"])
    assert "not a ckd training checkpoint" in line
    last.write_bytes(good)
    assert main(["train", str(stopped_run), "--resume"]) == 0


def test_a_teacher_checkpoint_that_is_not_one_is_one_line(tmp_path, fake_fmnist, capsys):
    for content in (b"", b"hello", b"PK\x03\x04 truncated zip"):
        bad = tmp_path / "teacher.pt"
        bad.write_bytes(content)
        cfg = tiny_config(
            fake_fmnist,
            tmp_path / "run",
            teacher={"name": "resnet8", "checkpoint": str(bad)},
            method={"name": "kd"},
        )
        line = one_error_line(capsys, ["train", str(write_config(tmp_path / "c.yaml", cfg))])
        assert f"{bad}: not a readable checkpoint" in line
    assert not (tmp_path / "run").exists()


def test_checkpoint_checksum_catches_a_flip_and_older_files_still_load(tmp_path):
    model = create_model("resnet8", 10, 1)
    sd = model.state_dict()
    path = tmp_path / "c.pt"
    save_atomic({"format": "ckd/1", "model": sd, "epoch": 2}, path)
    assert set(load_checkpoint(path)) == {"format", "model", "epoch"}
    raw = bytearray(path.read_bytes())
    raw[raw.find(sd["fc.bias"].numpy().tobytes()) + 1] ^= 0x01
    path.write_bytes(bytes(raw))
    assert torch.load(path, weights_only=True)["epoch"] == 2  # torch alone does not notice
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_weights(create_model("resnet8", 10, 1), path)  # a damaged ckd file as a teacher
    # files without a checksum: ckd's older ones, mdistiller's {"model": ...}, bare state dicts
    for obj in ({"format": "ckd/1", "model": sd, "epoch": 2}, {"model": sd}, sd):
        torch.save(obj, path)
        load_weights(create_model("resnet8", 10, 1), path)
    assert load_checkpoint(path).keys() == sd.keys()


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1}, path)

    def full(obj, f):
        f.write(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as e:
        save_atomic({"epoch": 2}, path)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1} and os.listdir(tmp_path) == ["last.pt"]

    def fails(_args):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("ckd.cli._cmd_list", fails)  # any command that writes
    line = one_error_line(capsys, ["list"])
    assert line == f"ckd: error: no space left on device (writing {path})"


def test_list_into_a_closed_pipe_exits_quietly(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckd", "list", "datasets"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # the reader is gone before ckd writes (as `| head` after its lines)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


@pytest.mark.parametrize("where", ["truncated", "flipped", "raw-truncated", "raw-label"])
def test_damaged_fashion_mnist_files_are_one_line_naming_the_file(
    tmp_path, fake_fmnist, where, capsys
):
    root = tmp_path / "fm"
    shutil.copytree(fake_fmnist, root)
    images, labels = root / "train-images-idx3-ubyte.gz", root / "train-labels-idx1-ubyte.gz"
    bad = images
    if where == "truncated":
        images.write_bytes(images.read_bytes()[:-300])
    elif where == "flipped":
        raw = bytearray(images.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        images.write_bytes(bytes(raw))
    else:  # uncompressed files, as in torchvision's raw/ folder
        for gz in (images, labels):
            gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
            gz.unlink()
        if where == "raw-truncated":
            bad = images.with_suffix("")
            bad.write_bytes(bad.read_bytes()[:-28])
        else:
            bad = labels.with_suffix("")
            raw = bytearray(bad.read_bytes())
            raw[20] = 200
            bad.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        D.build_dataset("fashion_mnist", str(root), train=True)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    cfg = tiny_config(root, tmp_path / "run")
    line = one_error_line(capsys, ["train", str(write_config(tmp_path / "c.yaml", cfg))])
    assert str(bad) in line and not (tmp_path / "run").exists()


def test_a_corrupt_image_in_a_folder_dataset_names_the_file(tmp_path):
    info = DatasetInfo("two", 2, 3, 224, (0.5,) * 3, (0.5,) * 3)
    for c in range(2):
        (tmp_path / "train" / f"c{c}").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 40), (c * 100, 50, 50)).save(tmp_path / "train" / f"c{c}/{i}.jpg")
    bad = tmp_path / "train" / "c1" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    dataset = imagefolder._image_folder(info, tmp_path / "train", train=True, augment=True)
    assert dataset[0][0].shape == (3, 224, 224)
    with pytest.raises(DataError, match="cannot read the image"):
        dataset[3]
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1)
    with pytest.raises(DataError) as e:  # raised in a worker process, re-raised here
        next(iter(loader))
    line = one_line(e.value)
    assert line.startswith(f"{bad}: cannot read the image"), line


@pytest.mark.parametrize(
    "override,expected",
    [
        ("run.seed=-1", "run.seed must be in [0, 2**63 - 1]; got -1"),
        ("run.seed=9223372036854775808", "run.seed: expected an integer of 64 bits"),
        ("run.out_dir=" + "x" * 300, "has 300 bytes; at most 255"),
        ("run.out_dir=/tmp/caf\udce9", "run.out_dir: expected UTF-8 text"),
        ("method.w_ckd=-1", "method.w_ckd must be >= 0; got -1.0"),
        ("method.w_ce=.inf", "method.w_ce: expected a finite number, got inf"),
        ("optim.lr=.nan", "optim.lr: expected a finite number, got nan"),
        ("optim.weight_decay=-.inf", "optim.weight_decay: expected a finite number"),
        ("data.train_subset=5000", "data.train_subset=5000 but the train split of fashion_mnist"),
    ],
)
def test_bad_values_are_one_line_before_anything_is_written(
    tmp_path, fake_fmnist, capsys, override, expected
):
    teacher = tmp_path / "t.pt"
    torch.save({"model": create_model("resnet8", 10, 1).state_dict()}, teacher)
    cfg = tiny_config(
        fake_fmnist,
        tmp_path / "run",
        teacher={"name": "resnet8", "checkpoint": str(teacher)},
        method={"name": "ckd"},
    )
    line = one_error_line(capsys, ["train", str(write_config(tmp_path / "c.yaml", cfg)), override])
    assert expected in line and not (tmp_path / "run").exists()


def test_an_out_dir_that_is_a_file_is_caught_before_data_is_built(tmp_path, capsys, monkeypatch):
    taken = tmp_path / "results.txt"
    taken.write_text("mine")
    # the data root does not exist: the out_dir error comes first, from the config alone
    cfg = tiny_config(tmp_path / "no-data", taken)
    for out in (taken, taken / "sub"):
        line = one_error_line(
            capsys, ["train", str(write_config(tmp_path / "c.yaml", cfg)), f"run.out_dir={out}"]
        )
        assert line == f"ckd: error: run.out_dir: '{taken}' is a file, not a folder"
    assert taken.read_text() == "mine"


def test_every_loss_weight_of_every_method_must_be_non_negative():
    seen = 0
    for name in METHODS:  # one registry for classification and detection
        options_cls = METHODS.get(name).Options
        for field in options_cls.__dataclass_fields__:
            if field.startswith("w_") or field.endswith("_weight"):
                seen += 1
                with pytest.raises(ValueError, match=f"method.{field} must be >= 0"):
                    options_cls(**{field: -1.0}).validate()
                options_cls(**{field: 0.0}).validate()
    assert seen >= 20
    for field in ("alpha", "beta"):  # DKD's two weights
        with pytest.raises(ValueError, match=f"method.{field} must be >= 0"):
            METHODS.get("dkd").Options(**{field: -0.5}).validate()


def test_overrides_may_follow_flags():
    args = parse_args(
        ["train", "cfg.yaml", "a=1", "--resume", "optim.lr=1e-3", "--stop-after", "2", "b=2"]
    )
    assert (
        args.overrides == ["a=1", "optim.lr=1e-3", "b=2"] and args.resume and args.stop_after == 2
    )
    assert parse_args(["cache", "build", "cfg", "--force", "x=1"]).overrides == ["x=1"]
    with pytest.raises(SystemExit) as e:
        parse_args(["train", "cfg.yaml", "--bogus", "a=1"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        parse_args(["list", "models", "a=1"])  # list takes no overrides
