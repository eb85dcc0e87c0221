"""The README's promise: a logit method is one file, and it serves classification and detection
alike. The README's own code block is run as that file, then trained on both tasks."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ckd.config import config_from_dict
from ckd.engine import Trainer
from ckd.engine.metrics import read_metrics
from ckd.methods import METHODS
from tests.conftest import tiny_config

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def mse_method():
    """Register the README's ``mse`` method (its code block, as the file it says to write)."""
    text = README.read_text()
    block = re.search(r"```python\n(# src/ckd/methods/mse\.py.*?)```", text, re.S)
    assert block, "the README's one-file method example is gone"
    module = types.ModuleType("ckd.methods.mse")
    sys.modules["ckd.methods.mse"] = module  # dataclasses look their module up
    exec(compile(block.group(1), "ckd/methods/mse.py", "exec"), module.__dict__)
    yield METHODS.get("mse")
    METHODS._items.pop("mse")
    del sys.modules["ckd.methods.mse"]


def quiet(_msg: str) -> None:
    pass


def test_the_readme_method_trains_a_classifier(mse_method, fake_fmnist, tmp_path):
    teacher_cfg = tiny_config(fake_fmnist, tmp_path / "t", optim={"epochs": 1})
    Trainer(config_from_dict(teacher_cfg), echo=quiet).fit()
    cfg = tiny_config(
        fake_fmnist,
        tmp_path / "s",
        teacher={"name": "resnet8", "checkpoint": str(tmp_path / "t" / "last.pt")},
        method={"name": "mse", "w_mse": 2.0},
        optim={"epochs": 1},
    )
    trainer = Trainer(config_from_dict(cfg), echo=quiet)
    d = trainer.distiller
    x, y, _ = next(trainer.task.loader.epoch(0))[0]
    d.eval()
    logits, terms = d.forward_train(x, y)
    with torch.no_grad():
        t = d.teacher(x)
    assert set(terms) == {"ce", "mse"}
    torch.testing.assert_close(terms["mse"], 2.0 * F.mse_loss(logits, t))
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits, y))
    trainer.fit()
    assert read_metrics(tmp_path / "s")[0]["train_mse"] > 0


def test_the_readme_method_distills_a_detector_on_its_rois(mse_method, tmp_path):
    from ckd.tasks.detection.shapes import make_shapes
    from ckd.tasks.detection.task import build_distiller
    from ckd.tasks.detection.view import capture
    from tests.tasks.detection.helpers import NUM_CLASSES, random_teacher, teacher_section
    from tests.tasks.detection.helpers import tiny_config as detection_config

    shapes = make_shapes(tmp_path / "shapes", 4, 2, size=64, max_shapes=2)
    teacher = random_teacher(tmp_path, "faster_rcnn")
    cfg = detection_config(shapes, tmp_path / "run", {"name": "mse"}, teacher_section(teacher))
    cfg["detector"]["arch"] = "faster_rcnn"
    cfg = config_from_dict(cfg)
    assert cfg.method.options.w_ce == 1.0  # the detector's own losses, unweighted
    torch.manual_seed(0)
    d = build_distiller(cfg, NUM_CLASSES, 4)
    d.train()
    from ckd.tasks.detection.data import CocoDetection, collate

    data = CocoDetection(shapes, "train2017", train=True)
    images, targets = collate([data[0], data[1]])
    with capture(d.student) as cap:
        _, terms = d.forward_train(images, targets)
    rois = cap.class_logits  # one row per RoI sampled for the student's box head
    assert rois.shape == (2 * 16, NUM_CLASSES) and {"mse", "loss_classifier"} <= set(terms)
    teacher_rois = d.teacher_outputs(images, cap).logits
    torch.testing.assert_close(terms["mse"], F.mse_loss(rois, teacher_rois))
    grads = torch.autograd.grad(
        terms["mse"], [p for p in d.student.parameters() if p.requires_grad], allow_unused=True
    )
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
