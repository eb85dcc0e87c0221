"""torchvision models (``tv:`` names): built with inferred stages, the prefixed names, a model
that cannot run on 32x32 images, and a torchvision pair distilled through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from ckd.cli import main
from ckd.data import dataset_info
from ckd.engine.checkpoint import load_checkpoint
from ckd.engine.metrics import read_metrics
from ckd.errors import ConfigError
from ckd.methods import METHODS
from ckd.models import (
    MODELS,
    create_model,
    infer_stage_names,
    stage_features,
)
from ckd.models.external import timm_available
from ckd.registry import UnknownNameError
from ckd.tasks.classification import ModelConfig, build_model
from tests.conftest import tiny_config
from tests.helpers import NOT_TERMS, save_random

# --------------------------------------------------------------------------- torchvision


def test_torchvision_models_build_and_have_inferred_stages():
    x = torch.randn(2, 1, 32, 32)
    resnet = create_model("tv:resnet18", num_classes=10, in_channels=1)
    stages, classifier = infer_stage_names(resnet, x)
    assert stages == ("relu", "layer1", "layer2", "layer3", "layer4") and classifier == "fc"
    logits, feats, embedding = stage_features(resnet, x)
    assert logits.shape == (2, 10) and embedding.shape == (2, 512)
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2, 1]

    mobile = create_model("tv:mobilenet_v3_small", num_classes=10, in_channels=1).train()
    stages, classifier = infer_stage_names(mobile, x)
    assert stages == ("features.0", "features.1", "features.3", "features.8", "features")
    assert classifier == "classifier.3"
    assert mobile.training and all(m.training for m in mobile.modules())  # modes restored
    mean_before = mobile.features[0][1].running_mean.clone()
    stage_features(mobile.eval(), x)
    assert torch.equal(mobile.features[0][1].running_mean, mean_before)


def test_inferred_stages_agree_with_the_zoo_names():
    """On zoo models (which name their stages) inference finds the same modules, except a stem
    whose map has the size of the first stage's (one stage per resolution)."""
    x = torch.zeros(2, 3, 32, 32)
    shuffle = create_model("ShuffleV1", 10)
    assert infer_stage_names(shuffle, x) == (shuffle.stage_names, shuffle.classifier_name)
    resnet = create_model("resnet8x4", 10)  # stem relu and layer1 are both 32x32
    assert infer_stage_names(resnet, x) == (resnet.stage_names[1:], resnet.classifier_name)


def test_prefixed_names_resolve_and_unknown_names_say_what_is_known():
    assert "tv:resnet34" in MODELS and "tv:resnet9" not in MODELS
    assert all(":" not in name for name in MODELS)  # listings show the zoo only
    with pytest.raises(UnknownNameError, match=r"known: .*resnet8x4.*tv:.*timm:"):
        create_model("resnet9")
    with pytest.raises(UnknownNameError, match="unknown torchvision model 'resnet9'"):
        create_model("tv:resnet9")
    if not timm_available():
        with pytest.raises(UnknownNameError, match="needs timm, which is not installed"):
            create_model("timm:resnet18")


def test_a_torchvision_model_that_cannot_run_on_32x32_is_one_config_error():
    with pytest.raises(ConfigError, match=r"tv:alexnet does not run on fashion_mnist images"):
        build_model(ModelConfig("tv:alexnet"), dataset_info("fashion_mnist"))


def feature_method() -> str | None:
    return next((m for m in ("fitnet", "at") if m in METHODS), None)


@pytest.mark.parametrize("method", ["ckd", "feature"])
def test_torchvision_pair_distills_through_the_cli(method, fake_fmnist, tmp_path, capsys):
    if method == "feature":
        method = feature_method()
        if method is None:
            pytest.skip("neither fitnet nor at is registered yet")
    teacher = tmp_path / "tv_resnet18.pth"
    save_random("tv:resnet18", teacher)
    out = tmp_path / "run"
    config = tmp_path / "tv.yaml"
    config.write_text(
        yaml.safe_dump(
            tiny_config(
                fake_fmnist,
                out,
                student={"name": "tv:mobilenet_v3_small"},
                teacher={"name": "tv:resnet18", "checkpoint": str(teacher)},
                method={"name": method},
                data={"batch_size": 16, "train_subset": 16, "test_subset": 4},
                optim={"epochs": 1, "lr": 0.01},
            )
        )
    )
    assert main(["train", str(config), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["finished"] and result["student"] == "tv:mobilenet_v3_small"
    row = read_metrics(out)[0]
    assert math.isfinite(row["train_loss"])
    assert {k for k in row if k.startswith("train_")} - NOT_TERMS - {"train_ce"}
    saved = load_checkpoint(out / "last.pt")
    student = create_model("tv:mobilenet_v3_small", 10, in_channels=1)
    student.load_state_dict(saved["model"])  # a plain torchvision state dict


def test_shipped_torchvision_config_loads():
    from ckd.config import load_config

    cfg = load_config(
        "fashion_mnist/tv_resnet18_mobilenet_v3_small_ckd", [f"teacher.checkpoint={__file__}"]
    )
    assert (cfg.teacher.name, cfg.student.name, cfg.method.name) == (
        "tv:resnet18",
        "tv:mobilenet_v3_small",
        "ckd",
    )
