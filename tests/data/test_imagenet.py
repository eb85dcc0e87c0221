"""The ImageNet / Places365 code path on generated folder trees, MobileNetV1, and the configs of the
paper's large-scale recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ckd.cli import main
from ckd.config import load_config
from ckd.data import build_dataset, imagenet_transform
from ckd.data.base import DataNotFoundError
from ckd.errors import ConfigError
from ckd.models import count_parameters, create_model


def make_image_folder(root: Path, classes: int, per_class: int = 1, size: int = 40) -> Path:
    """``root/{train,val}/c0000 ...``: ``per_class`` small class-coloured JPEGs per class."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"c{c:04d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                base = np.array([c * 37 % 256, c * 91 % 256, c * 13 % 256], dtype=np.uint8)
                noise = rng.integers(0, 40, (size, size + 8, 3), dtype=np.uint8)
                Image.fromarray(base + noise).save(folder / f"{i}.jpg")
    return root


@pytest.fixture(scope="module")
def imagenet_tree(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imagenet"), 1000)


def test_mobilenet_v1_matches_the_reference_size_and_stages():
    model = create_model("MobileNetV1", 1000, 3)
    assert count_parameters(model) == 4_231_976
    assert [n for n, _ in model.named_children()] == ["model", "avgpool", "fc"]
    from ckd.methods.views import run_network

    out = run_network(model.eval(), torch.randn(1, 3, 224, 224), features=True, preact=True)
    assert out.logits.shape == (1, 1000)
    assert [f.shape[1:] for f in out.feats] == [
        (128, 56, 56), (256, 28, 28), (512, 14, 14), (1024, 7, 7)
    ]  # fmt: skip
    # pre-activation maps are the same maps before their ReLU
    for pre, post in zip(out.preact, out.feats, strict=True):
        assert (pre < 0).any() and torch.equal(pre.clamp(min=0), post)


def test_standard_imagenet_transforms():
    image = Image.new("RGB", (500, 375))
    assert imagenet_transform(train=True)(image).shape == (3, 224, 224)
    test = imagenet_transform(train=False)
    assert [type(t).__name__ for t in test.transforms] == [
        "Resize", "CenterCrop", "ToTensor", "Normalize"
    ]  # fmt: skip
    assert test.transforms[0].size == 256 and test(image).shape == (3, 224, 224)


def test_image_folder_needs_every_class(tmp_path):
    make_image_folder(tmp_path, 3)
    with pytest.raises(DataNotFoundError, match="holds 3 class folders; expected 365"):
        build_dataset("places365", str(tmp_path), train=True)
    with pytest.raises(DataNotFoundError, match="no folder"):
        build_dataset("imagenet", str(tmp_path / "nothing"), train=False)


def test_imagenet_tree_trains_and_evaluates_through_the_cli(tmp_path, imagenet_tree, capsys):
    """A tv:resnet18 teacher (random weights, saved to a file) distilled into MobileNetV1 with
    CKD through the ImageNet config and data path, then evaluated by `ckd eval`."""
    teacher = create_model("tv:resnet18", 1000, 3)
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pth")
    out = tmp_path / "run"
    small = [
        f"data.root={imagenet_tree}",
        "data.train_subset=16",
        "data.test_subset=8",
        "data.batch_size=8",
        "data.test_batch_size=8",
        "data.num_workers=0",
        "optim.epochs=1",
        "optim.accum_steps=2",
        "optim.lr_reference_batch=512",
        "teacher.name=tv:resnet18",
        f"teacher.checkpoint={tmp_path / 'teacher.pth'}",
        f"run.out_dir={out}",
        "run.device=cpu",
        "run.tensorboard=false",
    ]
    assert main(["train", "imagenet/ckd/resnet50_MobileNetV1", *small]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["finished"] and result["student"] == "MobileNetV1"
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    # lr_update: epoch (the reference's): the epoch's two steps both at its first step's rate
    assert row["lr"] == pytest.approx(0.2 * 8 / 512)
    assert row["train_ckd"] > 0
    capsys.readouterr()
    assert main(["eval", str(out / "last.pt"), "--subset", "8", "--batch-size", "8"]) == 0
    assert "top-1" in capsys.readouterr().out


def test_the_fast_loader_refuses_folder_datasets(tmp_path, imagenet_tree):
    from ckd.engine import Trainer

    cfg = load_config(
        "imagenet/vanilla/resnet18",
        [
            f"data.root={imagenet_tree}",
            "data.loader=fast",
            f"run.out_dir={tmp_path / 'x'}",
            "run.device=cpu",
        ],
    )
    with pytest.raises(ConfigError, match="data.loader=fast: .* use data.loader=standard"):
        Trainer(cfg)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("name", "teacher", "student", "batch", "lr", "epochs", "schedule"),
    [
        ("imagenet/ckd/resnet34_resnet18", "tv:resnet34", "tv:resnet18", 512, 0.2, 200, "cosine"),
        (
            "imagenet/ckd/resnet50_MobileNetV1",
            "tv:resnet50",
            "MobileNetV1",
            512,
            0.2,
            200,
            "cosine",
        ),
        ("places365/ckd/resnet34_resnet18", "tv:resnet34", "tv:resnet18", 256, 0.2, 100, "step"),
        ("places365/ckd/resnet50_MobileNetV1", "tv:resnet50", "MobileNetV1", 256, 0.2, 100, "step"),
    ],
)
def test_large_scale_ckd_configs_carry_the_paper_recipes(
    name, teacher, student, batch, lr, epochs, schedule
):
    cfg = load_config(name, [f"teacher.checkpoint={__file__}"])
    assert (cfg.teacher.name, cfg.student.name) == (teacher, student)
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.optim.epochs) == (batch, lr, epochs)
    assert cfg.optim.schedule == schedule and cfg.optim.weight_decay == 1e-4
    assert (cfg.method.options.w_ckd, cfg.method.options.temperature) == (10.0, 1.0)
    if schedule == "step":
        assert cfg.optim.milestones == [30, 60, 90]


def test_pretrained_is_for_torchvision_models_only():
    with pytest.raises(ConfigError, match="teacher.pretrained is for torchvision and timm models"):
        load_config(
            "imagenet/ckd/resnet50_MobileNetV1",
            ["teacher.name=resnet56", "teacher.checkpoint=null", "teacher.pretrained=true"],
        )
