"""Teacher and student input normalisation (``Renormalize``): a wrapped model sees its own
normalisation and keeps its keys, ``build_model`` wraps after loading, options are validated."""

from __future__ import annotations

import pytest
import torch

from ckd.config import config_from_dict
from ckd.data import dataset_info
from ckd.engine import Trainer
from ckd.engine.checkpoint import load_checkpoint
from ckd.errors import ConfigError
from ckd.models import (
    Renormalize,
    create_model,
    load_weights,
    stage_features,
)
from ckd.tasks.classification import ModelConfig, build_model
from tests.conftest import tiny_config
from tests.helpers import assert_same_state, quiet, save_random

# --------------------------------------------------------------------------- normalisation

DATA_MEAN, DATA_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
MODEL_MEAN, MODEL_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def renormalised(x: torch.Tensor) -> torch.Tensor:
    view = (1, -1, 1, 1)
    pixels = x * torch.tensor(DATA_STD).view(view) + torch.tensor(DATA_MEAN).view(view)
    return (pixels - torch.tensor(MODEL_MEAN).view(view)) / torch.tensor(MODEL_STD).view(view)


def test_wrapped_model_sees_its_own_normalisation_and_keeps_its_keys(tmp_path):
    torch.manual_seed(0)
    inner = create_model("resnet8", 10).eval()
    wrapped = Renormalize(inner, DATA_MEAN, DATA_STD, MODEL_MEAN, MODEL_STD).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), inner(renormalised(x)), rtol=1e-5, atol=1e-5)
    assert list(wrapped.state_dict()) == list(inner.state_dict())
    assert wrapped.stage_names == tuple(f"model.{n}" for n in inner.stage_names)
    assert wrapped.classifier_name == "model.fc"
    with torch.no_grad():
        _, feats, emb = stage_features(wrapped, x)
        _, ref_feats, ref_emb = stage_features(inner, renormalised(x))
    torch.testing.assert_close(emb, ref_emb, rtol=1e-5, atol=1e-5)
    for f, r in zip(feats, ref_feats, strict=True):
        torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-5)

    # a checkpoint of the bare model loads into the wrapper (strict), and back
    other = create_model("resnet8", 10).eval()
    torch.save({"model": other.state_dict()}, tmp_path / "other.pth")
    load_weights(wrapped, tmp_path / "other.pth")
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), other(renormalised(x)), rtol=1e-5, atol=1e-5)
    plain = create_model("resnet8", 10)
    plain.load_state_dict(wrapped.state_dict())
    with pytest.raises(ValueError, match="missing keys"):
        load_weights(wrapped, {k: v for k, v in other.state_dict().items() if k != "fc.bias"})


def test_build_model_wraps_after_loading_and_training_saves_plain_state(tmp_path, fake_fmnist):
    info = dataset_info("fashion_mnist")
    ckpt = tmp_path / "teacher.pth"
    teacher_sd = save_random("resnet8", ckpt)
    net = build_model(ModelConfig("resnet8", str(ckpt), [0.3], [0.4]), info).eval()
    assert isinstance(net, Renormalize)
    bare = create_model("resnet8", 10, 1).eval()
    bare.load_state_dict(teacher_sd)
    x = torch.randn(2, 1, 32, 32)
    expected = (x * info.std[0] + info.mean[0] - 0.3) / 0.4
    with torch.no_grad():
        torch.testing.assert_close(net(x), bare(expected), rtol=1e-5, atol=1e-5)

    cfg = config_from_dict(
        tiny_config(
            fake_fmnist,
            tmp_path / "run",
            student={"name": "resnet8", "input_mean": [0.5], "input_std": [0.5]},
            teacher={
                "name": "resnet8",
                "checkpoint": str(ckpt),
                "input_mean": [0.3],
                "input_std": [0.4],
            },
            method={"name": "kd"},
            data={"batch_size": 16, "train_subset": 16, "test_subset": 4},
        )
    )
    Trainer(cfg, echo=quiet).fit(stop_after=1)
    trainer = Trainer(cfg, resume=True, echo=quiet)
    assert isinstance(trainer.distiller.teacher, Renormalize)
    assert_same_state(trainer.distiller.teacher, teacher_sd)
    assert trainer.fit()["finished"]
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    create_model("resnet8", 10, 1).load_state_dict(saved)  # strict: a plain zoo state dict


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        ({"input_mean": [0.5]}, "go together"),
        ({"input_mean": [0.5, 0.5], "input_std": [0.5, 0.5]}, "needs 1 value"),
        ({"input_mean": [0.5], "input_std": [0.0]}, "must be > 0"),
    ],
)
def test_normalisation_options_are_validated(teacher, message, tmp_path):
    data = tiny_config(
        tmp_path,
        tmp_path / "run",
        teacher={"name": "resnet8", "checkpoint": __file__, **teacher},
        method={"name": "kd"},
    )
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)
