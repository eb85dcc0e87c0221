"""Every registered method trains end to end (with resume) and lowers its loss, is listed with
its description and paper, and the logit methods standardise logits on request.

The all-methods test is parametrised over ``METHODS`` at collection time, so a method added
later is tested without editing this file.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch

from ckd.cli import main
from ckd.config import config_from_dict
from ckd.engine import Trainer
from ckd.engine.checkpoint import load_checkpoint
from ckd.engine.metrics import read_metrics
from ckd.losses import kd_loss, standardize_logits
from ckd.methods import METHODS
from tests.conftest import tiny_config
from tests.helpers import NOT_TERMS, assert_same_state, quiet, save_random

DISTILLING = [name for name in METHODS.names() if name != "vanilla"]
PAIRS = [("resnet32x4", "resnet8x4"), ("resnet32x4", "ShuffleV2")]


def fixed_objective(method: str) -> dict[str, int]:
    """Options the loss-decrease check needs beyond a method's defaults: a method with a
    ``warmup_epochs`` option (DKD, ReviewKD) raises its term's weight from 1/20 to 2/20 between
    the two epochs of this test, so its total loss goes up by construction; without the warm-up
    both epochs optimise the same objective."""
    fields = {f.name for f in dataclasses.fields(METHODS.get(method).Options)}
    return {"warmup_epochs": 0} if "warmup_epochs" in fields else {}


@pytest.fixture(scope="module")
def teacher32x4(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("teacher") / "resnet32x4.pth"
    return path, save_random("resnet32x4", path)


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("student", [s for _, s in PAIRS])
@pytest.mark.parametrize("method", DISTILLING)
def test_method_trains_resumes_and_lowers_its_loss(
    method, student, teacher32x4, fake_fmnist, tmp_path
):
    """Two epochs on the same 16 images (one batch, no augmentation, constant lr, no weight
    decay): epoch 2's loss is measured after one SGD step on the batch epoch 1 measured."""
    teacher_path, teacher_sd = teacher32x4
    cfg = config_from_dict(
        tiny_config(
            fake_fmnist,
            tmp_path / "run",
            student={"name": student},
            teacher={"name": "resnet32x4", "checkpoint": str(teacher_path)},
            method={"name": method, **fixed_objective(method)},
            data={
                "batch_size": 16,
                "train_subset": 16,
                "test_subset": 2,
                "test_batch_size": 2,
                "augment": False,
            },
            optim={"epochs": 2, "lr": 0.01, "schedule": "constant", "weight_decay": 0.0},
        )
    )
    first = Trainer(cfg, echo=quiet)
    assert not first.fit(stop_after=1)["finished"]
    assert_same_state(first.distiller.teacher, teacher_sd)

    second = Trainer(cfg, resume=True, echo=quiet)
    assert second.state.step == second.steps_per_epoch  # one epoch done
    result = second.fit()
    assert result["finished"] and result["epochs"] == 2
    assert_same_state(second.distiller.teacher, teacher_sd)
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert not any(k.startswith("teacher") for k in saved["model"])

    rows = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2]
    terms = {k for k in rows[0] if k.startswith("train_") and k not in NOT_TERMS}
    assert "train_ce" in terms and len(terms) >= 2, terms  # the method adds a term of its own
    for row in rows:
        bad = {k: v for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, bad
    assert rows[1]["train_loss"] < rows[0]["train_loss"], [
        {k: r[k] for k in sorted(terms | {"train_loss"})} for r in rows
    ]


def test_list_methods_prints_each_with_description_and_paper(capsys):
    assert main(["list", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, cls in METHODS.items():
        assert cls.description and cls.paper, name
        line = next((ln for ln in lines if re.match(rf"\s+{re.escape(name)}\s", ln)), None)
        assert line is not None, name
        assert cls.description in line and cls.paper in line, line


@pytest.mark.parametrize("name", ["kd", "dkd", "ckd"])
def test_logit_methods_standardise_on_request_only(name):
    from ckd.methods import Batch, Outputs, Setup

    cls = METHODS.get(name)
    assert cls.Options().logit_standardize is False  # the default is unchanged
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)

    def terms(options, teacher_logits):
        method = cls(options, Setup(10, 100))
        return method(Batch(Outputs(s), y, lambda: Outputs(teacher_logits), epoch=100))

    on = cls.Options(logit_standardize=True)
    base = terms(on, t)
    shifted = terms(on, 3.0 * t + 7.0)  # the teacher's scale and offset no longer matter
    for key in base:
        torch.testing.assert_close(base[key], shifted[key], rtol=1e-4, atol=1e-5)
    off = terms(cls.Options(), t)
    assert any(not torch.allclose(base[k], off[k]) for k in base if k != "ce")
    if name == "kd":
        o = on
        expected = o.w_kd * kd_loss(standardize_logits(s), standardize_logits(t), o.temperature)
        torch.testing.assert_close(base["kd"], expected)
