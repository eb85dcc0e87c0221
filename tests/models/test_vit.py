"""Vision transformers (timm ViT / DeiT) as teacher or student of the logit methods, built for
the dataset's image size; the one-line refusal of feature methods that read stage maps; the line
a timm: name gives without timm. (The shipped ResNet -> DeiT-Tiny config is trained through
`ckd train` and exported in tests/test_export.py.)"""

from __future__ import annotations

import copy

import pytest
import torch

import ckd.models.external as external
from ckd.cli import main
from ckd.config import config_from_dict, method_from_dict
from ckd.data import DatasetInfo, make_fake_image_folder
from ckd.errors import ConfigError
from ckd.methods import METHODS, Distiller, Setup
from ckd.models import create_model
from ckd.registry import UnknownNameError
from ckd.tasks.classification import build_distiller

DEIT = "timm:deit_tiny_patch16_224"
INFO = DatasetInfo("folder", 4, 1, 32, (0.5,), (0.25,))


def config(student: str, teacher: str | None, method: dict, root: str = "x") -> dict:
    cfg = {
        "data": {"name": "folder", "root": root, "image_size": 32},
        "student": {"name": student},
        "method": method,
    }
    if teacher is not None:
        cfg["teacher"] = {"name": teacher, "checkpoint": __file__}
    return cfg


def distiller(student: str, teacher: str | None, method: dict):
    """The distiller of the config (teacher weights random: its checkpoint is not read)."""
    cfg = config_from_dict(config(student, teacher, method))
    cfg.teacher.checkpoint = None
    return build_distiller(cfg, INFO, num_train=8)


def test_vits_are_built_for_the_datasets_image_size():
    pytest.importorskip("timm")
    vit = create_model(DEIT, 10, 1, image_size=32)
    assert vit.pos_embed.shape == (1, 1 + 2 * 2, 192)  # 2x2 patches of 16 px, and the class token
    assert vit(torch.zeros(3, 1, 32, 32)).shape == (3, 10)
    vit = create_model("timm:vit_tiny_patch16_224", 5, 3, image_size=64)
    assert vit.pos_embed.shape == (1, 1 + 4 * 4, 192)
    # a CNN takes no img_size (and needs none): built as it is
    assert create_model("timm:resnet18", 10, 3, image_size=32)(torch.zeros(2, 3, 32, 32)).shape == (
        2,
        10,
    )


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    """A DeiT-Tiny for 4 classes of 1x32x32 images (built once: a ViT takes a while to build)."""
    pytest.importorskip("timm")
    torch.manual_seed(0)
    return create_model(DEIT, INFO.num_classes, INFO.in_channels, INFO.image_size)


def logit_distiller(student: torch.nn.Module, teacher: torch.nn.Module, method: dict):
    parts = method_from_dict(method).parts()
    setup = Setup(INFO.num_classes, num_train=8)
    return Distiller(student, teacher, [METHODS.get(p.name)(p.options, setup) for p in parts])


@pytest.mark.parametrize(
    "method",
    [
        {"name": "ckd", "w_ckd": 10.0, "logit_standardize": True},
        {"name": "kd", "logit_standardize": True},
        {"name": "dkd", "logit_standardize": True},
    ],
)
def test_a_vit_student_learns_from_a_resnet_teacher_with_the_logit_methods(vit, method):
    torch.manual_seed(0)
    d = logit_distiller(copy.deepcopy(vit), create_model("resnet8", 4, 1), method)
    images, targets = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    d.train()
    logits, terms = d.forward_train(images, targets, epoch=0, step=0, index=torch.arange(4))
    assert logits.shape == (4, 4) and set(terms) >= {"ce"}
    loss = sum(terms.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert d.student.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.teacher.parameters())


def test_a_vit_teacher_for_a_cnn_student(vit):
    d = logit_distiller(create_model("resnet8", 4, 1), copy.deepcopy(vit), {"name": "kd"})
    _, terms = d.forward_train(torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(terms["kd"]) and terms["kd"] > 0


@pytest.mark.parametrize(
    ("student", "teacher", "method", "role"),
    [
        (DEIT, "resnet20", "fitnet", "student"),
        ("resnet8", DEIT, "at", "teacher"),
    ],
)
def test_feature_methods_that_read_stage_maps_refuse_a_vit(student, teacher, method, role):
    pytest.importorskip("timm")
    with pytest.raises(ConfigError) as err:
        distiller(student, teacher, {"name": method})
    message = str(err.value)
    assert message.startswith(f"{role} {DEIT} has no convolutional stage maps")
    assert f"method {method!r} reads" in message and "ckd" in message and "\n" not in message


def test_embedding_methods_serve_a_vit():
    pytest.importorskip("timm")
    d = distiller(DEIT, "resnet20", {"name": "rkd"})
    _, terms = d.forward_train(torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(sum(terms.values()))


def test_the_refusal_comes_from_ckd_train_before_anything_is_written(tmp_path, capsys):
    pytest.importorskip("timm")
    root = make_fake_image_folder(tmp_path / "data", per_class=2, val_per_class=1)
    teacher = tmp_path / "t.pt"
    torch.save({"model": create_model("resnet8", 3, 3).state_dict()}, teacher)
    out = tmp_path / "run"
    argv = [
        "train", "folder/ckd_deit", f"data.root={root}", "teacher.name=resnet8",
        f"teacher.checkpoint={teacher}", "method={name: fitnet}", f"run.out_dir={out}",
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ckd: error: student {DEIT} has no convolutional stage maps")
    assert err.count("\n") == 0 and not out.exists()


def test_without_timm_a_timm_name_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(external, "timm_available", lambda: False)
    with pytest.raises(UnknownNameError, match=r"needs timm: .*pip install 'ckd-distill\[timm\]'"):
        create_model(DEIT, 10)
    root = make_fake_image_folder(tmp_path / "data", per_class=2, val_per_class=1)
    argv = ["train", "folder/vanilla", f"data.root={root}", f"student.name={DEIT}",
            f"run.out_dir={tmp_path / 'run'}"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"ckd: error: model '{DEIT}' needs timm: timm is not installed; pip install "
        "'ckd-distill[timm]' (or pip install timm), or use a torchvision model, tv:<name>"
    )
