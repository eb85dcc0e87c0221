"""End to end: real training beats chance, resume equals an uninterrupted run, distillation
through the CLI, checkpoints and logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ckd.cli import main
from ckd.config import config_from_dict
from ckd.engine import Trainer
from ckd.engine.checkpoint import load_checkpoint
from ckd.engine.metrics import read_metrics
from tests.conftest import tiny_config

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def quiet(_msg: str) -> None:
    pass


@pytest.mark.skipif(
    not DEBIAN_FMNIST.is_dir(), reason="apt-get install dataset-fashion-mnist (make test does)"
)
def test_real_fashion_mnist_beats_chance_by_a_wide_margin(tmp_path):
    cfg = config_from_dict(
        tiny_config(
            DEBIAN_FMNIST,
            tmp_path / "run",
            data={"train_subset": 2000, "test_subset": 1000, "batch_size": 64},
            optim={"epochs": 2, "lr": 0.1},
        )
    )
    result = Trainer(cfg, echo=quiet).fit()
    assert result["finished"]
    assert result["last_top1"] > 55.0, result  # chance is 10%


def test_resume_equals_uninterrupted(tmp_path, fake_fmnist):
    def cfg(out):
        return config_from_dict(
            tiny_config(
                fake_fmnist,
                out,
                student={"name": "resnet8"},
                teacher={"name": "resnet8", "checkpoint": str(teacher)},
                method={"name": "ckd", "w_ckd": 10.0},
                optim={"epochs": 3, "schedule": "step", "milestones": [2], "warmup_epochs": 1.0},
            )
        )

    teacher_cfg = config_from_dict(tiny_config(fake_fmnist, tmp_path / "teacher"))
    Trainer(teacher_cfg, echo=quiet).fit()
    teacher = tmp_path / "teacher" / "last.pt"

    straight = Trainer(cfg(tmp_path / "a"), echo=quiet).fit()
    first = Trainer(cfg(tmp_path / "b"), echo=quiet).fit(stop_after=1)
    assert not first["finished"] and not (tmp_path / "b" / "result.json").exists()
    resumed = Trainer(cfg(tmp_path / "b"), resume=True, echo=quiet).fit()

    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert straight["last_top1"] == resumed["last_top1"]
    assert straight["best_top1"] == resumed["best_top1"]
    rows_a, rows_b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["epoch"] for r in rows_b] == [1, 2, 3]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["test_top1"] == rb["test_top1"] and ra["train_loss"] == rb["train_loss"]


def test_teacher_then_ckd_student_through_the_cli(tmp_path, fake_fmnist, capsys):
    import yaml

    teacher_yaml = tmp_path / "teacher.yaml"
    teacher_yaml.write_text(
        yaml.safe_dump(tiny_config(fake_fmnist, tmp_path / "t", student={"name": "resnet14"}))
    )
    assert main(["train", str(teacher_yaml)]) == 0
    ckpt = tmp_path / "t" / "last.pt"
    assert ckpt.is_file() and (tmp_path / "t" / "best.pt").is_file()
    assert (tmp_path / "t" / "config.yaml").is_file()

    student_yaml = tmp_path / "student.yaml"
    student_yaml.write_text(
        yaml.safe_dump(
            tiny_config(
                fake_fmnist,
                tmp_path / "s",
                teacher={"name": "resnet14", "checkpoint": str(ckpt)},
                method={"name": "ckd", "w_ckd": 10.0, "temperature": 1.0},
                run={"tensorboard": True},
            )
        )
    )
    capsys.readouterr()
    assert main(["train", str(student_yaml), "optim.lr=0.02", "--json"]) == 0
    out = capsys.readouterr().out
    assert "teacher resnet14: top-1" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["finished"] and result["teacher_top1"] is not None
    assert result == json.loads((tmp_path / "s" / "result.json").read_text())
    rows = read_metrics(tmp_path / "s")
    assert len(rows) == 2 and {"train_ce", "train_ckd", "test_top1", "test_top5"} <= set(rows[0])
    assert any((tmp_path / "s" / "tensorboard").iterdir())
    saved = load_checkpoint(tmp_path / "s" / "last.pt")
    assert saved["config"]["optim"]["lr"] == 0.02
    assert not any(k.startswith("teacher") for k in saved["model"])

    # `ckd eval` measures the checkpoint with what its config says
    assert main(["eval", str(tmp_path / "s" / "last.pt"), "--json"]) == 0
    measured = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert measured["top1"] == pytest.approx(result["last_top1"])

    # a finished run is never overwritten by a second start
    before = (tmp_path / "s" / "last.pt").read_bytes()
    assert main(["train", str(student_yaml)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "s" / "last.pt").read_bytes() == before

    # resuming a finished run trains nothing more and reports it
    assert main(["train", str(tmp_path / "s"), "--resume"]) == 0
    assert (tmp_path / "s" / "last.pt").read_bytes() == before


def test_demo_runs_teacher_and_three_students_and_reuses_finished_runs(tmp_path, fake_fmnist):
    from ckd.demo import run_demo

    fast = [
        "optim.epochs=1",
        "data.num_workers=0",
        "run.tensorboard=false",
        "run.device=cpu",
        "data.train_subset=96",
        "data.test_subset=50",
    ]
    table = run_demo(tmp_path / "demo", data_root=str(fake_fmnist), overrides=fast)
    for label in ("teacher", "CE", "KD", "CKD"):
        assert f"| {label} |" in table
        assert (tmp_path / "demo" / label.lower() / "result.json").is_file()
    assert (tmp_path / "demo" / "curves.png").stat().st_size > 10_000
    stamp = (tmp_path / "demo" / "ckd" / "last.pt").stat().st_mtime_ns
    assert run_demo(tmp_path / "demo", data_root=str(fake_fmnist), overrides=fast) == table
    assert (tmp_path / "demo" / "ckd" / "last.pt").stat().st_mtime_ns == stamp
