"""The zoo's pre-activation taps (``preact_names``, ``preact_bn_names``) that OFD and ReviewKD
read: each stage's feature before its ReLU, one model per family."""

from __future__ import annotations

import pytest
import torch

from ckd.models import FeatureExtractor, create_model, stage_features
from ckd.models.zoo.common import channel_shuffle


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small batches gain nothing from threads, and on a busy machine threads spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- zoo taps
# one model per family; how each family's stage feature follows from its pre-activation
TAP_FAMILIES = {
    "resnet8": "relu",
    "ResNet18": "relu",
    "ResNet50": "relu",
    "ShuffleV1": "relu",
    "vgg8": "relu",
    "ShuffleV2": "relu+shuffle",
    "MobileNetV2": "same",
    "wrn_16_1": "bn",  # equal widths: identity shortcut in the first block
    "wrn_16_2": "bn",  # widening: the first block's shortcut conv reads the activation
}


@pytest.mark.parametrize("name", sorted(TAP_FAMILIES))
def test_preact_taps_give_each_stage_before_its_relu(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    keys = set(model.state_dict())
    with FeatureExtractor(model, model.preact_names) as fx, torch.no_grad():
        _, feats, _ = stage_features(model, torch.randn(2, 3, 32, 32))
    pre = [fx.features[n] for n in model.preact_names]
    assert len(pre) == len(feats) == len(model.stage_names)
    rule = TAP_FAMILIES[name]
    for i, (p, f) in enumerate(zip(pre, feats, strict=True)):
        assert p.shape == f.shape and (p < 0).any(), (name, i)
        if rule == "bn":  # WRN: the block sum after the BN that next normalises it
            bn = model.get_submodule(model.preact_bn_names[i])
            assert torch.equal(p, bn(f)) and not torch.equal(p, f), (name, i)
        elif rule == "same" and i > 0:  # linear bottlenecks
            assert torch.equal(p, f)
        elif rule == "relu+shuffle" and i > 0:  # the reference's order: [kept half, branch]
            assert torch.equal(channel_shuffle(p.relu(), 2), f)
        else:
            assert torch.equal(p.relu(), f)
    for i, bn_name in enumerate(model.preact_bn_names):  # OFD's margins
        bn = model.get_submodule(bn_name)
        assert isinstance(bn, torch.nn.BatchNorm2d) and bn.num_features == feats[i].shape[1]
    assert len(model.preact_bn_names) == (0 if name == "ShuffleV2" else len(feats))
    assert set(model.state_dict()) == keys
