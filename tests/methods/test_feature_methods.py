"""Feature and relation methods (FitNet, AT, NST, SP, KDSVD, PKT, RKD): the reference
defaults and shipped configs, and short training runs through the distiller on resnet32x4 ->
resnet8x4 / ShuffleV2 (their losses: tests/losses/test_feature_losses.py)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from ckd.config import load_config
from ckd.losses import (
    at_loss,
    fitnet_loss,
    kdsvd_loss,
    nst_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    sp_loss,
)
from ckd.methods import METHODS, Distiller, Setup
from ckd.methods.fitnet import HintRegressor
from ckd.methods.views import network_shapes
from ckd.models import create_model
from tests.descent import assert_descends

# ---------------------------------------------------------------- methods
NAMES = ["fitnet", "at", "nst", "kdsvd", "sp", "pkt", "rkd"]
TERMS = {
    "fitnet": ("fitnet",),
    "at": ("at",),
    "nst": ("nst",),
    "kdsvd": ("kdsvd",),
    "sp": ("sp",),
    "pkt": ("pkt",),
    "rkd": ("rkd_distance", "rkd_angle"),
}
# Defaults of the reference code base (mdistiller cfg.py; RepDistiller run_cifar_distill.sh).
DEFAULTS = {
    "fitnet": {"w_ce": 1.0, "w_fitnet": 100.0, "hint_layer": 2},
    "at": {"w_ce": 1.0, "w_at": 1000.0, "p": 2.0},
    "nst": {"w_ce": 1.0, "w_nst": 50.0},
    "kdsvd": {"w_ce": 1.0, "w_kdsvd": 1.0, "k": 1, "vectors": "width"},
    "sp": {"w_ce": 1.0, "w_sp": 3000.0},
    "pkt": {"w_ce": 1.0, "w_pkt": 30000.0, "eps": 1e-7},
    "rkd": {
        "w_ce": 1.0,
        "w_rkd": 1.0,
        "distance_weight": 25.0,
        "angle_weight": 50.0,
        "squared": False,
        "eps": 1e-12,
    },
}
_NETS: dict[str, tuple[torch.nn.Module, object]] = {}


def _net(name: str):
    """A freshly initialised zoo model (num_classes 10) and its feature shapes, built once per
    session and copied."""
    if name not in _NETS:
        torch.manual_seed(0)
        net = create_model(name, num_classes=10)
        _NETS[name] = (net, network_shapes(net, 10, torch.zeros(2, 3, 32, 32)))
    net, shapes = _NETS[name]
    return copy.deepcopy(net), shapes


def make(name: str, student: str = "resnet8x4", teacher: str = "resnet32x4", **options):
    (s, s_shapes), (t, t_shapes) = _net(student), _net(teacher)
    cls = METHODS.get(name)
    torch.manual_seed(0)
    return Distiller(s, t, [cls(cls.Options(**options), Setup(10, 100, s_shapes, t_shapes))])


def fixed_batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(8, 3, 32, 32, generator=g), torch.randint(10, (8,), generator=g)


def test_defaults_are_the_reference_ones():
    for name, want in DEFAULTS.items():
        options = METHODS.get(name).Options()
        options.validate()
        assert {k: getattr(options, k) for k in want} == want
        cls = METHODS.get(name)
        assert cls.needs_features and cls.needs_teacher and cls.description and cls.paper


@pytest.mark.parametrize("name", NAMES)
def test_shipped_config_uses_the_defaults_on_the_step_schedule(name):
    cfg = load_config(f"cifar100/{name}/resnet32x4_resnet8x4", [f"teacher.checkpoint={__file__}"])
    assert cfg.method.name == name
    assert dataclasses.asdict(cfg.method.options) == dataclasses.asdict(METHODS.get(name).Options())
    assert (cfg.student.name, cfg.teacher.name) == ("resnet8x4", "resnet32x4")
    o = cfg.optim
    assert (o.epochs, o.lr, o.schedule, list(o.milestones), o.weight_decay) == (
        240,
        0.05,
        "step",
        [150, 180, 210],
        0.0005,
    )
    assert cfg.data.batch_size == 64


def expected_terms(name, method, b) -> dict[str, torch.Tensor]:
    """The method's terms restated from the batch's features and the reference's stages."""
    fs, ft = b.student.feats, b.teacher.feats
    es, et = b.student.embedding, b.teacher.embedding
    return {
        "fitnet": lambda: {"fitnet": 100 * fitnet_loss(method.regressor(fs[2]), ft[2])},
        "at": lambda: {"at": 1000 * at_loss(fs[1:], ft[1:])},
        "nst": lambda: {"nst": 50 * nst_loss(fs[1:], ft[1:])},
        "kdsvd": lambda: {"kdsvd": kdsvd_loss(fs[1:], ft[1:])},
        "sp": lambda: {"sp": 3000 * sp_loss(fs[-1], ft[-1])},
        "pkt": lambda: {"pkt": 30000 * pkt_loss(es, et)},
        "rkd": lambda: {
            "rkd_distance": 25 * rkd_distance_loss(es, et),
            "rkd_angle": 50 * rkd_angle_loss(es, et),
        },
    }[name]()


@pytest.mark.parametrize("student", ["resnet8x4", "ShuffleV2"])
@pytest.mark.parametrize("name", NAMES)
def test_gradient_step_lowers_the_term_and_leaves_the_teacher_alone(name, student):
    d = make(name, student)
    method = d.methods[0]
    before = copy.deepcopy(d.teacher.state_dict())  # weights and BN running statistics
    own = list(method.parameters())
    assert d.extra_parameters() == sum(p.numel() for p in own)
    teacher_ids = {id(p) for p in d.teacher.parameters()}
    assert not teacher_ids & {id(p) for p in d.trainable_parameters()}

    # The batch is fixed and the teacher frozen: run it once, then reuse its outputs (CPU time).
    run_teacher, cache = d.teacher_outputs, []

    def teacher_once(images, context=None):
        if not cache:
            cache.append(run_teacher(images, context))
        return cache[0]

    d.teacher_outputs = teacher_once
    seen, method_forward = [], method.forward

    def recording_forward(b):
        seen.append(b)
        return method_forward(b)

    method.forward = recording_forward

    d.train()
    x, y = fixed_batch()
    logits, terms = d.forward_train(x, y, epoch=0, step=0, index=torch.arange(8))
    assert set(terms) == {"ce", *TERMS[name]}
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in terms.values())
    assert all(torch.isfinite(v) for v in terms.values())
    assert not d.teacher.training and d.student.training
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    for key, value in expected_terms(name, method, seen[0]).items():
        assert terms[key].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-7)
    # the whole loss: gradients reach the student and the method's modules only
    sum(terms.values()).backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    assert all(p.grad is not None for p in d.student.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
    torch.optim.SGD(d.trainable_parameters(), lr=1e-3, momentum=0.9).step()
    after = d.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    # in float64 (the losses then compute in float64), on half the batch (CPU time), a step
    # along the term's negative gradient lowers it as the gradient predicts
    d.double()
    t = cache[0]  # the frozen teacher's outputs are constants of the term: in float64 as they are
    cache[0] = dataclasses.replace(
        t,
        logits=t.logits[:4].double(),
        feats=tuple(f[:4].double() for f in t.feats),
        embedding=t.embedding[:4].double(),
    )
    x64, y4 = x[:4].double(), y[:4]

    def term() -> torch.Tensor:
        _, t = d.forward_train(x64, y4, epoch=0, step=1, index=torch.arange(4))
        return sum(t[k] for k in TERMS[name])

    assert_descends(term, list(d.trainable_parameters()), (name, student))
    assert not any(k.startswith("teacher.") for k in d.trainable_state_dict())


def test_fitnet_regressor_parameters_and_checkpoint():
    d = make("fitnet")
    # resnet32x4 -> resnet8x4, hint layer 2: both [128, 16, 16]; 1x1 conv (+bias) and BN
    assert d.extra_parameters() == 128 * 128 + 128 + 2 * 128 == 16768
    state = d.trainable_state_dict()
    assert {"methods.0.regressor.conv.weight", "methods.0.regressor.bn.running_mean"} <= set(state)
    other = make("fitnet")
    with torch.no_grad():
        next(d.methods[0].regressor.parameters()).add_(1.0)
    other.load_trainable_state_dict(d.trainable_state_dict())
    assert torch.equal(other.methods[0].regressor.conv.weight, d.methods[0].regressor.conv.weight)


@pytest.mark.parametrize(
    "s_shape,t_shape,kind,kernel",
    [
        ((8, 16, 16), (4, 8, 8), torch.nn.Conv2d, (3, 3)),
        ((8, 4, 4), (4, 8, 8), torch.nn.ConvTranspose2d, (4, 4)),
        ((8, 6, 6), (4, 4, 4), torch.nn.Conv2d, (3, 3)),
        ((8, 4, 4), (4, 4, 4), torch.nn.Conv2d, (1, 1)),
    ],
)
def test_hint_regressor_maps_to_the_teacher_shape(s_shape, t_shape, kind, kernel):
    reg = HintRegressor(s_shape, t_shape)
    assert type(reg.conv) is kind and tuple(reg.conv.kernel_size) == kernel
    assert reg(torch.randn(2, *s_shape)).shape == (2, *t_shape)


def test_fitnet_rejects_what_it_cannot_regress():
    with pytest.raises(ValueError, match="no regressor"):
        HintRegressor((8, 2, 2), (4, 8, 8))
    with pytest.raises(ValueError, match="hint_layer"):
        make("fitnet", hint_layer=4)
    fitnet = METHODS.get("fitnet")
    with pytest.raises(ValueError, match="feature shapes"):
        fitnet(fitnet.Options(), Setup(10, 100))


def test_options_validation_names_the_bad_value():
    bad = {
        "fitnet": {"hint_layer": -1},
        "at": {"p": 0.0},
        "nst": {"w_nst": -1.0},
        "kdsvd": {"vectors": "height"},
        "sp": {"w_sp": -1.0},
        "pkt": {"eps": 0.0},
        "rkd": {"angle_weight": -1.0},
    }
    for name, options in bad.items():
        field = next(iter(options))
        with pytest.raises(ValueError, match=f"method.{field} must"):
            METHODS.get(name).Options(**options).validate()


@pytest.mark.parametrize(
    "teacher,student",
    [("vgg13", "MobileNetV2"), ("wrn_40_2", "ShuffleV1"), ("resnet56", "resnet20")],
)
def test_all_seven_together_on_other_pairs(teacher, student):
    # stages differ in size and count conventions (VGG/MobileNetV2 have five, WRN stage
    # features are pre-activation): every method builds and gives finite terms and gradients
    d = make_combined(teacher, student)
    x, y = fixed_batch()
    d.train()
    _, terms = d.forward_train(x[:4], y[:4], epoch=0, step=0, index=None)
    assert set(terms) == {"ce"} | {t for name in NAMES for t in TERMS[name]}
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    grads = [p.grad for p in d.trainable_parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def make_combined(teacher: str, student: str) -> Distiller:
    (s, s_shapes), (t, t_shapes) = _net(student), _net(teacher)
    setup = Setup(10, 100, s_shapes, t_shapes)
    return Distiller(s, t, [METHODS.get(n)(METHODS.get(n).Options(), setup) for n in NAMES])
