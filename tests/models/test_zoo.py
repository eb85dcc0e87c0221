"""The CIFAR zoo matches the RepDistiller / mdistiller reference layer for layer.

``tests/fixtures/reference_zoo.json`` was produced by ``tests/fixtures/make_reference_zoo.py``
from the reference source: state-dict layout, parameter count, and (with the same name-seeded
weights from ``zoo_fill.fill_state``) logits and feature summaries on a fixed input.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ckd.models import (
    MODELS,
    FeatureExtractor,
    count_parameters,
    create_model,
    load_weights,
    model_names,
    stage_features,
)
from ckd.registry import UnknownNameError
from tests.zoo_fill import decode_layout, fill_state, fixed_input, named_shapes

REF = json.loads((Path(__file__).parents[1] / "fixtures" / "reference_zoo.json").read_text())
NAMES = sorted(REF["models"])
NUM_CLASSES = REF["num_classes"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny batches gain nothing from threads, and on a busy machine threads spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def filled(name: str, num_classes: int = NUM_CLASSES) -> tuple[nn.Module, dict]:
    model = create_model(name, num_classes=num_classes)
    state = fill_state(named_shapes(model.state_dict()))
    return model, state


def close(actual: torch.Tensor, expected: list, what: str) -> None:
    expected_t = torch.tensor(expected, dtype=actual.dtype)
    scale = max(1.0, expected_t.abs().max().item())
    torch.testing.assert_close(actual, expected_t, rtol=1e-4, atol=1e-4 * scale, msg=what)


def test_registry_holds_the_reference_cifar_names_and_the_imagenet_student() -> None:
    assert model_names() == sorted(MODELS) == sorted([*NAMES, "MobileNetV1"])
    assert len(NAMES) == 26


def test_literature_parameter_counts() -> None:
    assert count_parameters(create_model("resnet8x4")) == 1_233_540
    assert count_parameters(create_model("resnet32x4")) == 7_433_860
    assert REF["models"]["resnet8x4"]["num_params"] == 1_233_540
    assert REF["models"]["resnet32x4"]["num_params"] == 7_433_860
    # the CKD code's extra WRNs (100 classes)
    wrn = {"wrn_16_4": 2_772_020, "wrn_28_2": 1_479_220, "wrn_28_4": 5_872_180}
    for name, count in wrn.items():
        assert count_parameters(create_model(name)) == REF["models"][name]["num_params"] == count


@pytest.mark.parametrize("name", NAMES)
def test_matches_reference(name: str) -> None:
    ref = REF["models"][name]
    model, state = filled(name)
    assert named_shapes(model.state_dict()) == decode_layout(ref["state"])
    assert count_parameters(model) == ref["num_params"]
    load_weights(model, state)
    model.eval()
    with torch.no_grad():
        logits, feats, embedding = stage_features(model, fixed_input())
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, NUM_CLASSES)
    close(logits, ref["logits"], f"{name} logits")
    assert len(feats) == len(ref["features"]) == len(model.stage_names)
    for i, (f, (*shape, mean_abs)) in enumerate(zip(feats, ref["features"], strict=True)):
        assert list(f.shape) == shape, f"{name} feature {i}"
        close(f.abs().mean(), mean_abs, f"{name} feature {i}")
    *shape, mean_abs = ref["embedding"]
    assert list(embedding.shape) == shape
    close(embedding.abs().mean(), mean_abs, f"{name} embedding")
    # stages go from shallow to deep: spatial size never grows
    sides = [f.shape[-1] for f in feats]
    assert sides == sorted(sides, reverse=True) and sides[0] >= sides[-1] * 2
    head = model.get_submodule(model.classifier_name)
    assert isinstance(head, nn.Linear) and head.in_features == shape[1]


# one model per architecture family (the stem code is shared within a family)
@pytest.mark.parametrize(
    "name", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet18"]
)
def test_single_channel_input(name: str) -> None:
    model = create_model(name, num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        out = model(fixed_input(in_channels=1))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.fixture(scope="module")
def resnet8() -> tuple[nn.Module, dict, torch.Tensor]:
    model, state = filled("resnet8")
    load_weights(model, state)
    with torch.no_grad():
        expected = model.eval()(fixed_input())
    return model, state, expected


def fresh_logits(source: object, strict: bool = True) -> torch.Tensor:
    model = load_weights(create_model("resnet8"), source, strict=strict)  # type: ignore[arg-type]
    with torch.no_grad():
        return model.eval()(fixed_input())


def test_load_weights_wrappers_and_files(resnet8, tmp_path: Path) -> None:
    _, state, expected = resnet8
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": state, "epoch": 240, "best_acc": torch.tensor(73.0)}, path)
    legacy = tmp_path / "legacy.pth"  # pre-1.6 serialization, as old teachers may use
    torch.save({"model": state}, legacy, _use_new_zipfile_serialization=False)
    for source in (
        path,
        str(path),
        legacy,
        state,
        {"model": state},
        {"state_dict": state},
        {f"module.{k}": v for k, v in state.items()},
        {"model": {f"module.{k}": v for k, v in state.items()}},
    ):
        torch.testing.assert_close(fresh_logits(source), expected, rtol=0, atol=0)


def test_load_weights_rejects_mismatches(resnet8) -> None:
    _, state, _ = resnet8
    bad = dict(state)
    del bad["fc.bias"]
    bad["extra.weight"] = torch.zeros(1)
    bad["conv1.weight"] = torch.zeros(16, 3, 5, 5)
    with pytest.raises(ValueError) as err:
        fresh_logits(bad)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("fc.bias", "extra.weight", "conv1.weight", "[16, 3, 5, 5]"):
        assert part in msg
    lenient = {k: v for k, v in state.items() if k != "fc.bias"}
    fresh_logits(lenient, strict=False)  # missing keys are fine when not strict
    with pytest.raises(ValueError, match="shape mismatch"):
        fresh_logits({**lenient, "fc.weight": torch.zeros(3, 64)}, strict=False)
    with pytest.raises(ValueError, match="no tensors"):
        fresh_logits({"epoch": 3})


def test_load_weights_refuses_pickled_code(resnet8, tmp_path: Path) -> None:
    _, state, _ = resnet8
    path = tmp_path / "unsafe.pth"
    torch.save({"model": state, "extra": Path("x")}, path)  # a class weights_only refuses
    with pytest.raises(ValueError, match="weights_only=True refuses it: Unsupported global"):
        fresh_logits(path)


def test_feature_extractor_inputs_hooks_and_gradients(resnet8) -> None:
    model, _, _ = resnet8
    x = fixed_input()
    with FeatureExtractor(model, ["layer3", "fc:in"]) as fx:
        logits = model.eval()(x)
    assert set(fx.features) == {"layer3", "fc:in"}
    assert fx.features["fc:in"].shape == (2, 64)
    torch.testing.assert_close(fx.features["layer3"].mean((2, 3)), fx.features["fc:in"])
    fx.clear()
    model(x)
    assert fx.features == {}  # hooks were removed on exit
    logits, feats, _ = stage_features(model.train(), x)
    feats[1].pow(2).mean().backward()  # features stay attached to the graph
    assert model.conv1.weight.grad is not None
    model.zero_grad()
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        FeatureExtractor(model, ["relu", "nope"])
    assert not model.relu._forward_hooks  # a failed constructor leaves no hook behind


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UnknownNameError) as err:
        create_model("resnet9")
    assert "resnet8x4" in str(err.value) and "ShuffleV2" in str(err.value)


def test_reference_style_checkpoint_with_numpy_scalars_loads(tmp_path):
    import numpy as np

    model = create_model("resnet8", num_classes=10)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": model.state_dict(), "best_acc": np.float64(71.2), "epoch": 240}, path)
    load_weights(create_model("resnet8", num_classes=10), path)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save(
        {"model": create_model("resnet8", num_classes=10).state_dict(), "x": _Payload()}, path
    )
    with pytest.raises(ValueError, match="weights_only"):
        load_weights(create_model("resnet8", num_classes=10), path)
    assert "must never run" not in capsys.readouterr().out
