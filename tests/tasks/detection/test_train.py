"""Detection through ``ckd train``: a teacher, a distilled student with COCO box and mask AP,
exact resume, and the run-folder and config checks. Tiny detectors, a few iterations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from ckd.cli import main
from ckd.engine.checkpoint import load_checkpoint
from ckd.tasks.detection.shapes import make_shapes
from tests.tasks.detection.helpers import CKD_REVIEW, teacher_section, tiny_config, tiny_model

# pycocotools 2.0 with NumPy 2: a warning from inside the library, harmless
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"), 12, 6, size=64, max_shapes=2)


def write(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def trained_teacher(shapes, tmp_path_factory) -> Path:
    """A teacher trained for 2 iterations through `ckd train` (method vanilla)."""
    tmp = tmp_path_factory.mktemp("teacher_run")
    cfg = tiny_config(shapes, tmp / "run", {"name": "vanilla"})
    cfg["student"] = tiny_model("resnet18", 32, norm="bn")
    cfg["optim"] |= {"iters": 2, "milestones": []}
    cfg["run"] |= {"eval_every": 2}
    assert main(["train", write(tmp / "teacher.yaml", cfg)]) == 0
    result = json.loads((tmp / "run" / "result.json").read_text())
    assert result["finished"] and "last_mask_AP" in result and "last_box_AP50" in result
    return tmp / "run" / "last.pt"


def student_config(shapes: Path, out: Path, teacher: Path) -> dict:
    section = {
        **teacher_section(teacher),
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }  # as trained above (the default)
    return tiny_config(shapes, out, CKD_REVIEW, section)


def test_distilled_student_trains_through_the_cli_and_reports_box_and_mask_ap(
    shapes, trained_teacher, tmp_path, capsys
):
    path = write(tmp_path / "ckd.yaml", student_config(shapes, tmp_path / "run", trained_teacher))
    assert main(["train", path, "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["finished"] and result["steps"] == 4 and result["method"] == "ckd"
    for key in ("box_AP", "box_AP50", "box_AP75", "box_APs", "mask_AP", "mask_AP50"):
        assert result[f"last_{key}"] >= -1
    assert result["teacher_box_AP"] >= 0 and result["best_iter"] == 4
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]
    assert {"train_ckd", "train_reviewkd", "train_loss_mask"} <= set(rows[0])
    assert "test_box_AP" in rows[-1] and "test_mask_AP" in rows[-1]
    # the run folder is never overwritten without --resume
    assert main(["train", path]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_resume_equals_an_uninterrupted_run(shapes, trained_teacher, tmp_path, capsys):
    full = write(tmp_path / "a.yaml", student_config(shapes, tmp_path / "a", trained_teacher))
    part = write(tmp_path / "b.yaml", student_config(shapes, tmp_path / "b", trained_teacher))
    assert main(["train", full]) == 0
    assert main(["train", part, "--stop-after", "3"]) == 0  # mid-epoch (6 batches per epoch)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 3
    assert main(["train", part, "optim.lr=0.02", "--resume"]) == 2  # another config: refused
    assert "optim.lr is 0.02 but the run was started with 0.01" in capsys.readouterr().err
    assert main(["train", part, "--resume"]) == 0
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 4
    for part_name in ("model", "method"):
        assert a[part_name].keys() == b[part_name].keys()
        for k, v in a[part_name].items():
            assert torch.equal(v, b[part_name][k]), k
    rows = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["iter"] for r in rows] == [1, 2, 3, 4]


def _train_rank(rank: int, path: str, out: str, stop_after) -> None:
    """One rank of a torchrun-like launch (``tests.helpers._launch``)."""
    torch.set_num_threads(1)
    from ckd.config import load_config
    from ckd.engine import Trainer

    trainer = Trainer(load_config(path), echo=lambda _: None)
    trainer.fit(stop_after=stop_after)
    torch.save(trainer.distiller.student.state_dict(), Path(out) / f"student_rank{rank}.pt")


@pytest.mark.slow  # two gloo processes; CI's slow job runs it
def test_two_processes_distill_a_detector_and_one_process_resumes(
    shapes, trained_teacher, tmp_path
):
    """Two gloo processes share each global batch of 4: identical students on both ranks, files
    from rank 0 only, loss terms averaged over ranks; a single process resumes the run."""
    from tests.helpers import _launch

    out = tmp_path / "run"
    cfg = student_config(shapes, out, trained_teacher)
    cfg["data"] |= {"batch_size": 4}  # 2 per rank: BN in the method modules needs 2
    path = write(tmp_path / "ckd.yaml", cfg)
    _launch(_train_rank, 2, path, str(tmp_path), 2)
    a = torch.load(tmp_path / "student_rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "student_rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a if "running_" not in k)
    kept = sorted(p.name for p in out.iterdir() if p.name != ".ckd.lock")  # the lock stays
    assert kept == ["config.yaml", "last.pt", "metrics.jsonl"]
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2] and rows[0]["train_ckd"] > 0
    assert main(["train", path, "--resume"]) == 0  # one process goes on from iteration 2
    result = json.loads((out / "result.json").read_text())
    assert result["finished"] and result["steps"] == 4 and result["processes"] == 1
