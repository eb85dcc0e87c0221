"""`ckd export`: a run's student alone as ONNX, TorchScript or safetensors, checked against
PyTorch, with the sidecar saying what input it expects; a zoo CNN (with and without its own input
normalisation) and the shipped DeiT-Tiny student trained through `ckd train`; refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import ckd.export as export_module
from ckd.cli import main
from ckd.data import make_fake_image_folder
from ckd.export import TOLERANCE
from ckd.models import create_model
from ckd.tasks.classification import ModelConfig, build_model, load_student

COMMON = [
    "optim.epochs=1",
    "data.batch_size=6",
    "data.num_workers=0",
    "run.tensorboard=false",
    "run.device=cpu",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """3 classes of 6 train / 2 val grey 20x20 images."""
    return make_fake_image_folder(
        tmp_path_factory.mktemp("data"), per_class=6, val_per_class=2, channels=1
    )


def train(argv: list[str]) -> None:
    assert main(["train", *argv, *COMMON]) == 0


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("cnn")
    train(["folder/vanilla", f"data.root={data_root}", f"run.out_dir={out}"])
    return out


@pytest.fixture(scope="module")
def renorm_run(tmp_path_factory, data_root) -> Path:
    """A student with its own input normalisation (the Renormalize wrapper)."""
    out = tmp_path_factory.mktemp("renorm")
    train(
        [
            "folder/vanilla", f"data.root={data_root}", f"run.out_dir={out}",
            "student.input_mean=[0.3]", "student.input_std=[0.2]",
        ]
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory, data_root) -> Path:
    """The shipped ResNet -> DeiT-Tiny CKD config, one short epoch through `ckd train`."""
    pytest.importorskip("timm")
    out = tmp_path_factory.mktemp("vit")
    teacher = out.parent / "teacher.pt"
    torch.save({"model": create_model("resnet8", 3, 1).state_dict()}, teacher)
    train(
        [
            "folder/ckd_deit", f"data.root={data_root}", f"run.out_dir={out}",
            "teacher.name=resnet8", f"teacher.checkpoint={teacher}",
        ]
    )  # fmt: skip
    assert json.loads((out / "result.json").read_text())["last_top1"] >= 0
    return out


def run_export(source: Path, fmt: str, *extra: str) -> int:
    return main(["export", str(source), "--format", fmt, *extra])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_export_round_trips_a_zoo_student(cnn_run, fmt, capsys, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"student.{fmt}"
    assert run_export(cnn_run, fmt, "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} and student.{fmt}.json: resnet8 (epoch 1)" in printed
    assert "input float32 Nx1x32x32" in printed and "max |difference|" in printed
    meta = json.loads((tmp_path / f"student.{fmt}.json").read_text())
    assert meta["input"]["model_normalisation"] is None
    check = meta["check"]
    assert check["ok"] and check["max_abs_diff"] <= check["tolerance"]
    assert check["batch"] == [3, 1, 32, 32]
    assert meta["input"]["shape"] == ["N", 1, 32, 32]
    assert meta["input"]["normalize"] == {"mean": [0.449], "std": [0.226]}
    assert meta["output"]["classes"] == ["class_0", "class_1", "class_2"]
    # the exported file reproduces the trained student on an input of its own
    student = load_student(cnn_run).model
    x = torch.randn(5, 1, 32, 32)
    with torch.no_grad():
        want = student(x)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    elif fmt == "torchscript":
        got = torch.jit.load(str(out))(x)
    else:  # as a teacher checkpoint
        got = build_model(ModelConfig("resnet8", str(out)), load_student(cnn_run).info).eval()(x)
    assert torch.allclose(got, want, atol=TOLERANCE * max(1.0, float(want.abs().max())))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_round_trips_a_vit_student(vit_run, fmt, capsys):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    assert run_export(vit_run, fmt) == 0  # default output: beside last.pt
    suffix = {"onnx": ".onnx", "torchscript": ".torchscript"}[fmt]
    meta = json.loads((vit_run / f"last{suffix}.json").read_text())
    assert meta["model"] == "timm:deit_tiny_patch16_224" and meta["check"]["ok"]
    assert (vit_run / f"last{suffix}").is_file()
    assert "max |difference|" in capsys.readouterr().out


def test_the_students_own_normalisation_travels_with_it(renorm_run, capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    assert run_export(renorm_run, "onnx", "--out", str(tmp_path / "s.onnx")) == 0
    meta = json.loads((tmp_path / "s.onnx.json").read_text())
    own = meta["input"]["model_normalisation"]
    assert (own["mean"], own["std"]) == ([0.3], [0.2]) and own["applied"].startswith("inside")
    assert meta["input"]["normalize"]["mean"] == [0.449]  # what the input is normalised with
    # the safetensors file holds the bare network; with the run's input_mean/std it is the same
    assert run_export(renorm_run, "safetensors", "--out", str(tmp_path / "s.safetensors")) == 0
    own = json.loads((tmp_path / "s.safetensors.json").read_text())["input"]["model_normalisation"]
    assert own["applied"].startswith("not in the file")
    student = load_student(renorm_run)
    rebuilt = build_model(
        ModelConfig("resnet8", str(tmp_path / "s.safetensors"), [0.3], [0.2]), student.info
    ).eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), student.model(x))
        bare = build_model(ModelConfig("resnet8", str(tmp_path / "s.safetensors")), student.info)
        assert not torch.allclose(bare.eval()(x), student.model(x))


def test_an_existing_output_is_kept_unless_forced(cnn_run, capsys, tmp_path):
    out = tmp_path / "s.torchscript"
    assert run_export(cnn_run, "torchscript", "--out", str(out)) == 0
    first = out.read_bytes()
    assert run_export(cnn_run, "torchscript", "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"ckd: error: {out} already exists; give another --out, or --force to replace it"
    assert out.read_bytes() == first
    # export's own output (its sidecar records its bytes) is replaced with --force
    assert run_export(cnn_run, "torchscript", "--out", str(out), "--force") == 0
    assert torch.jit.load(str(out)) is not None


def test_a_failed_check_writes_nothing(cnn_run, capsys, tmp_path, monkeypatch):
    writer = export_module.WRITERS["torchscript"]

    def off_by_a_bit(student, path):
        exported = writer(student, path)
        return lambda x: exported(x) + 0.01

    monkeypatch.setitem(export_module.WRITERS, "torchscript", off_by_a_bit)
    assert run_export(cnn_run, "torchscript", "--out", str(tmp_path / "s.ts")) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ckd: error: the torchscript model's logits differ from PyTorch's by")
    assert err.endswith("nothing written")
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_are_one_line(cnn_run, capsys, tmp_path, monkeypatch):
    cases = [
        ([str(tmp_path / "nothing")], "does not exist; give a run folder or a checkpoint file"),
        ([str(tmp_path)], "is a folder without last.pt"),
    ]
    plain = tmp_path / "plain.pth"
    torch.save(create_model("resnet8", 3, 1).state_dict(), plain)
    cases.append(([str(plain)], "is not a checkpoint of a ckd run"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    cases.append(([str(junk)], "cannot be read as a checkpoint"))
    cases.append(([str(cnn_run), "--out", str(tmp_path / "no" / "x.onnx")], "does not exist"))
    for argv, message in cases:
        assert main(["export", *argv, "--format", "torchscript"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ckd: error: ") and message in err and "\n" not in err, err
    # onnxruntime absent: said before anything is written
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert run_export(cnn_run, "onnx", "--out", str(tmp_path / "x.onnx")) == 2
    assert "pip install 'ckd-distill[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(SystemExit):  # argparse: the formats are listed
        main(["export", str(cnn_run), "--format", "pickle"])
