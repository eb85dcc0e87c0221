"""Distillers: the teacher stays frozen, gradients reach the student, terms equal the losses."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ckd.losses import ckd_loss, dkd_loss, kd_loss
from ckd.methods import METHODS, Distiller, Setup
from ckd.models import create_model


def make(name: str, **options):
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=10)
    teacher = create_model("resnet14", num_classes=10) if METHODS.get(name).needs_teacher else None
    cls = METHODS.get(name)
    return Distiller(student, teacher, [cls(cls.Options(**options), Setup(10, 100))])


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 32, 32, generator=g), torch.randint(10, (8,), generator=g)


def test_registry_has_the_core_methods():
    assert {"vanilla", "kd", "dkd", "ckd"} <= set(METHODS.names())
    for _, cls in METHODS.items():
        assert cls.description and cls.paper


@pytest.mark.parametrize("name", ["kd", "dkd", "ckd"])
def test_teacher_is_frozen_through_training_steps(name):
    d = make(name)
    before = copy.deepcopy(d.teacher.state_dict())  # weights and BN running statistics
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.1, momentum=0.9)
    d.train()
    assert not d.teacher.training and d.student.training
    teacher_params = {id(p) for p in d.teacher.parameters()}
    assert not teacher_params & {id(p) for p in d.trainable_parameters()}
    for step in range(3):
        x, y = batch()
        _, terms = d.forward_train(x, y, epoch=step, step=step, index=torch.arange(8))
        opt.zero_grad()
        sum(terms.values()).backward()
        assert all(p.grad is None for p in d.teacher.parameters())
        assert all(p.grad is not None for p in d.student.parameters())
        opt.step()
    after = d.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert d.extra_parameters() == 0
    assert not any(k.startswith("teacher.") for k in d.trainable_state_dict())


def _terms(d, **ctx):
    x, y = batch()
    d.eval()  # same student logits for the check below (BN in eval mode)
    logits, terms = d.forward_train(x, y, epoch=ctx.get("epoch", 0), step=0, index=None)
    with torch.no_grad():
        t = d.teacher(x) if d.teacher is not None else None
    return logits, t, y, terms


def test_ckd_terms_are_the_weighted_losses():
    d = make("ckd", w_ce=1.0, w_ckd=100.0, temperature=2.0, negatives="student")
    s, t, y, terms = _terms(d)
    assert set(terms) == {"ce", "ckd"}
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-5)
    want = 100.0 * ckd_loss(s, t, 2.0, "student")
    assert terms["ckd"].item() == pytest.approx(want.item(), rel=1e-5)


def test_kd_terms_are_the_weighted_losses():
    d = make("kd")  # defaults of the reference recipe
    o = d.methods[0].options
    assert (o.w_ce, o.w_kd, o.temperature) == (0.1, 0.9, 4.0)
    s, t, y, terms = _terms(d)
    assert terms["ce"].item() == pytest.approx(0.1 * F.cross_entropy(s, y).item(), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(0.9 * kd_loss(s, t, 4.0).item(), rel=1e-5)


def test_dkd_warms_up_linearly_over_its_epochs():
    d = make("dkd", beta=2.0, warmup_epochs=20)
    from ckd.methods.base import Batch

    def factor(epoch: int, step: int = 0, **warm: int) -> float:
        return Batch(None, None, lambda: None, epoch=epoch, step=step).warmup(**warm)

    assert [factor(e, epochs=20) for e in (0, 9, 19, 100)] == [0.05, 0.5, 1.0, 1.0]
    assert [factor(3, s, iters=100) for s in (0, 49, 99, 500)] == [0.01, 0.5, 1.0, 1.0]
    assert factor(0) == 1.0
    s, t, y, early = _terms(d, epoch=0)
    full = dkd_loss(s, t, y, 1.0, 2.0, 4.0)
    assert early["dkd"].item() == pytest.approx(0.05 * full.item(), rel=1e-5)
    _, _, _, late = _terms(d, epoch=40)
    assert late["dkd"].item() == pytest.approx(full.item(), rel=1e-5)


def test_vanilla_needs_no_teacher_and_others_do():
    d = make("vanilla")
    assert d.teacher is None
    _, _, _, terms = _terms(d)
    assert set(terms) == {"ce"}
    ckd = METHODS.get("ckd")
    with pytest.raises(ValueError, match="needs a teacher"):
        Distiller(create_model("resnet8", 10), None, [ckd(ckd.Options(), Setup(10, 100))])


def test_options_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="negatives"):
        METHODS.get("ckd").Options(negatives="teacher").validate()
    with pytest.raises(ValueError, match="temperature"):
        METHODS.get("kd").Options(temperature=0).validate()


def test_methods_combine_with_one_teacher_pass_and_one_ce():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10)
    ckd, kd = METHODS.get("ckd"), METHODS.get("kd")
    d = Distiller(
        student,
        teacher,
        [ckd(ckd.Options(w_ckd=10.0), Setup(10, 100)), kd(kd.Options(w_ce=0.5), Setup(10, 100))],
    )
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    x, y = batch()
    d.eval()
    logits, terms = d.forward_train(x, y, epoch=0, step=0, index=None)
    assert set(terms) == {"ce", "ckd", "kd"} and len(calls) == 1
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)


def test_combination_from_config(tmp_path):
    from ckd.config import config_from_dict
    from ckd.errors import ConfigError
    from tests.conftest import tiny_config

    base = tiny_config(
        tmp_path, tmp_path / "o", teacher={"name": "resnet8", "checkpoint": __file__}
    )
    base["method"] = {"name": "ckd", "w_ckd": 5.0, "also": [{"name": "kd", "temperature": 2.0}]}
    cfg = config_from_dict(base)
    assert [m.name for m in cfg.method.parts()] == ["ckd", "kd"]
    assert cfg.method.also[0].options.temperature == 2.0
    assert config_from_dict(cfg.to_dict()).method.to_dict() == cfg.method.to_dict()
    base["method"]["also"] = [{"name": "kd", "temprature": 2.0}]
    with pytest.raises(ConfigError, match=r"unknown key method.also\[0\].temprature"):
        config_from_dict(base)
