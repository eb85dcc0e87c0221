"""Every registered method trains end to end, any model can be teacher or student, the engine
knows no method by name; teacher input normalisation and logit standardisation.

The all-methods test is parametrised over ``METHODS`` at collection time, so a method added
later is tested without editing this file.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import tokenize
from pathlib import Path

import pytest
import torch
import yaml

import ckd.engine.trainer
import ckd.tasks.classification
from ckd.cli import main
from ckd.config import ModelConfig, config_from_dict
from ckd.data import dataset_info
from ckd.engine import Trainer
from ckd.engine.checkpoint import load_checkpoint
from ckd.engine.metrics import read_metrics
from ckd.errors import ConfigError
from ckd.losses import kd_loss, standardize_logits
from ckd.methods import METHODS
from ckd.models import (
    MODELS,
    Renormalize,
    create_model,
    infer_stage_names,
    load_weights,
    stage_features,
)
from ckd.models.external import timm_available
from ckd.registry import UnknownNameError
from ckd.tasks.classification import build_model
from tests.conftest import tiny_config

DISTILLING = [name for name in METHODS.names() if name != "vanilla"]
PAIRS = [("resnet32x4", "resnet8x4"), ("resnet32x4", "ShuffleV2")]
NOT_TERMS = {"train_loss", "train_top1", "train_time_s"}


def fixed_objective(method: str) -> dict[str, int]:
    """Options the loss-decrease check needs beyond a method's defaults: a method with a
    ``warmup_epochs`` option (DKD, ReviewKD) raises its term's weight from 1/20 to 2/20 between
    the two epochs of this test, so its total loss goes up by construction; without the warm-up
    both epochs optimise the same objective."""
    fields = {f.name for f in dataclasses.fields(METHODS.get(method).Options)}
    return {"warmup_epochs": 0} if "warmup_epochs" in fields else {}


def quiet(_msg: str) -> None:
    pass


def save_random(name: str, path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random-weight 10-class, 1-channel model saved as ``{"model": state_dict}``."""
    torch.manual_seed(seed)
    sd = {k: v.clone() for k, v in create_model(name, 10, in_channels=1).state_dict().items()}
    torch.save({"model": sd}, path)
    return sd


@pytest.fixture(scope="module")
def teacher32x4(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("teacher") / "resnet32x4.pth"
    return path, save_random("resnet32x4", path)


def assert_same_state(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():  # weights and BN buffers (running stats, counters)
        assert torch.equal(state[key].cpu(), value), key


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


# --------------------------------------------------------------------------- no method by name


LITERAL = re.compile("^[a-zA-Z]*(" + "|".join(["'''", '"""', "'", '"']) + r")(.*)\1$", re.S)


def code_words(path: Path) -> list[tuple[int, str]]:
    """(line, word) of the identifiers and string literals of a Python file, without comments
    and docstrings (a string that is a statement of its own); ``ckd`` as the package
    (``ckd.x``) is not a word of its own. A literal counts by its whole text (``"crd"``), so
    messages in English do not trip on a method called ``at``."""
    tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
    tokens = [t for t in tokens if t.type not in (tokenize.COMMENT, tokenize.NL)]
    starts = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}
    words = []
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1] if i else None
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.type == tokenize.NAME:
            if tok.string == "ckd" and nxt is not None and nxt.string == ".":
                continue
            words.append((tok.start[0], tok.string))
        elif tok.type == tokenize.STRING:
            alone = (prev is None or prev.type in starts) and (
                nxt is None or nxt.type in (tokenize.NEWLINE, tokenize.ENDMARKER)
            )
            text = LITERAL.match(tok.string)
            if not alone and text:
                words.append((tok.start[0], text.group(2).strip()))
    return words


ENGINE = sorted(
    p
    for folder in ("engine", "tasks")
    for p in (Path(ckd.engine.trainer.__file__).parents[1] / folder).glob("*.py")
)


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_engine_names_no_method(path):
    names = {n.lower() for n in METHODS.names()}
    found = [(line, w) for line, w in code_words(path) if w.lower() in names]
    assert not found, f"{path.name} names methods at (line, word): {found}"


def test_list_methods_prints_each_with_description_and_paper(capsys):
    assert main(["list", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, cls in METHODS.items():
        assert cls.description and cls.paper, name
        line = next((ln for ln in lines if re.match(rf"\s+{re.escape(name)}\s", ln)), None)
        assert line is not None, name
        assert cls.description in line and cls.paper in line, line


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


# --------------------------------------------------------------------------- standardisation


def test_standardize_logits_golden_values():
    z = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 8.0], [5.0, 5.0, 5.0]])
    a = math.sqrt(1.5)  # [1, 2, 3]: mean 2, population std sqrt(2/3)
    expected = torch.tensor(
        [[-a, 0.0, a], [-1 / math.sqrt(2), -1 / math.sqrt(2), math.sqrt(2)], [0.0, 0.0, 0.0]]
    )
    torch.testing.assert_close(standardize_logits(z), expected, rtol=1e-5, atol=1e-5)
    assert standardize_logits(z.half()).dtype == torch.float32
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        standardize_logits(torch.zeros(3))


def test_standardize_logits_is_invariant_to_per_sample_scale_and_shift():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 100, generator=g) * 3
    scale = torch.rand(6, 1, generator=g) * 10 + 0.1
    shift = torch.randn(6, 1, generator=g) * 50
    out = standardize_logits(z)
    torch.testing.assert_close(standardize_logits(z * scale + shift), out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.mean(1), torch.zeros(6), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.pow(2).mean(1), torch.ones(6), rtol=1e-4, atol=1e-4)


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
