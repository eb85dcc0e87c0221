"""OFD, VID, CRD and ReviewKD as methods on resnet32x4 -> resnet8x4 / ShuffleV2: training
steps, frozen teacher, method parameters, state round trip (their losses:
tests/losses/test_ofd_vid_crd_reviewkd.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ckd.methods import METHODS, Distiller, Outputs, Setup
from ckd.methods.views import network_shapes
from ckd.models import create_model, stage_features
from tests.descent import assert_descends


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small batches gain nothing from threads, and on a busy machine threads spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- the methods
NAMES = ("ofd", "vid", "crd", "reviewkd")
STUDENTS = ("resnet8x4", "ShuffleV2")
# Parameters each method adds for resnet32x4 -> student (10 classes), derived by hand:
# OFD: connectors conv1x1 (C_s -> C_t) + BN(C_t) on the 3 stages after the stem;
# VID: regressors C_s*C_t + 2*C_t^2 and C_t log-variances per stage;
# CRD: linear heads (D_s + 1) * 128 + (D_t + 1) * 128;
# ReviewKD: ABFs conv1x1 (C_s -> mid) + BN, conv3x3 (mid -> C_t) + BN, attention conv
# (2 mid -> 2, with bias) except at the embedding level; mid = 256 (resnet8x4), 512 (ShuffleV2).
EXTRA = {
    ("ofd", "resnet8x4"): 86_912,
    ("vid", "resnet8x4"): 258_496,
    ("crd", "resnet8x4"): 65_792,
    ("reviewkd", "resnet8x4"): 1_808_774,
    ("ofd", "ShuffleV2"): 156_800,
    ("vid", "ShuffleV2"): 328_384,
    ("crd", "ShuffleV2"): 164_096,
    ("reviewkd", "ShuffleV2"): 4_195_718,
}
_SHAPES: dict[str, object] = {}


def shapes(model_name: str, model: torch.nn.Module):
    if model_name not in _SHAPES:
        _SHAPES[model_name] = network_shapes(model, 10, torch.zeros(2, 3, 32, 32))
    return _SHAPES[model_name]


def distiller(name: str, student: str, teacher: str = "resnet32x4", seed: int = 0, **options):
    torch.manual_seed(seed)
    s, t = create_model(student, num_classes=10), create_model(teacher, num_classes=10)
    setup = Setup(10, 64, shapes(student, s), shapes(teacher, t))
    cls = METHODS.get(name)
    return Distiller(s, t, [cls(cls.Options(**options), setup)])


def batch(n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(10, (n,), generator=g)
    return x, y, torch.randperm(64, generator=g)[:n]


def test_registered_with_reference_defaults():
    assert set(NAMES) <= set(METHODS.names())
    o = {n: METHODS.get(n).Options() for n in NAMES}
    assert (o["ofd"].w_ce, o["ofd"].w_ofd, o["ofd"].connector_kernel) == (1.0, 1e-3, 1)
    assert (o["vid"].w_vid, o["vid"].init_pred_var, o["vid"].eps) == (1.0, 5.0, 1e-5)
    crd = o["crd"]
    assert (crd.w_ce, crd.w_crd, crd.feat_dim, crd.nce_k) == (1.0, 0.8, 128, 16384)
    assert (crd.nce_t, crd.nce_m) == (0.07, 0.5)
    r = o["reviewkd"]
    assert (r.w_reviewkd, r.warmup_epochs, r.max_mid_channels) == (1.0, 20, 512)
    for n in NAMES:
        cls = METHODS.get(n)
        assert cls.needs_features and cls.needs_teacher and cls.description and cls.paper


@pytest.mark.parametrize("student", STUDENTS)
@pytest.mark.parametrize("name", NAMES)
def test_gradient_step_lowers_the_term_and_leaves_the_teacher_alone(name, student):
    options = {"nce_m": 1.0} if name == "crd" else {}
    d = distiller(name, student, **options)
    method = d.methods[0]
    assert d.extra_parameters() == EXTRA[(name, student)]
    assert d.extra_parameters() == sum(p.numel() for p in method.parameters())
    if name == "crd":  # banks held fixed (unit rows, momentum 1), so the term is a function of
        with torch.no_grad():  # the weights: with the default momentum the batch's rows move
            method.memory_student.copy_(F.normalize(method.memory_student, dim=1))
            method.memory_teacher.copy_(F.normalize(method.memory_teacher, dim=1))
    before = copy.deepcopy(d.teacher.state_dict())  # weights and BN running statistics
    own = {id(p) for p in method.parameters()}
    d.train()
    x, y, index = batch()
    torch.manual_seed(123)  # CRD's negatives
    _, terms = d.forward_train(x, y, epoch=40, step=0, index=index)
    assert set(terms) == {"ce", name} and terms[name].dtype == torch.float32
    terms[name].backward()
    # the term's gradient reaches the student and the method, never the teacher
    assert all(p.grad is None for p in d.teacher.parameters())
    assert all(p.grad is not None and p.grad.isfinite().all() for p in method.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.student.parameters())
    assert own.isdisjoint(id(p) for p in d.teacher.parameters())
    torch.optim.SGD(d.trainable_parameters(), lr=0.02, momentum=0.9).step()
    after = d.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not d.teacher.training
    # the trainable state (student + method modules and buffers) round-trips exactly
    state = {k: v.clone() for k, v in d.trainable_state_dict().items()}
    assert not any(k.startswith("teacher.") for k in state)
    other = distiller(name, student, seed=7, **options)
    other.load_trainable_state_dict(state)
    restored = other.trainable_state_dict()
    assert set(restored) == set(state)
    assert all(torch.equal(restored[k], state[k]) for k in state)

    # in float64 (the losses then compute in float64), on half the batch (CPU time), with the
    # frozen teacher's outputs given as constants, a step along the term's negative gradient
    # lowers it as the gradient predicts
    x4, y4, i4 = x[:4], y[:4], index[:4]
    t = d.teacher_outputs(x4)
    t = Outputs(
        t.logits.double(),
        tuple(f.double() for f in t.feats),
        t.embedding.double(),
        tuple(f.double() for f in t.preact),
    )
    d.double()

    def term() -> torch.Tensor:
        torch.manual_seed(123)  # CRD: the same negatives at every evaluation
        return d.forward_train(x4.double(), y4, teacher=t, epoch=40, step=1, index=i4)[1][name]

    assert_descends(term, list(d.trainable_parameters()), (name, student))


@pytest.mark.parametrize("student", STUDENTS)
def test_crd_banks_follow_the_batch_and_resume_exactly(student):
    d = distiller("crd", student)
    method = d.methods[0]
    assert method.memory_student.shape == method.memory_teacher.shape == (64, 128)
    assert method.normalisers.tolist() == [-1.0, -1.0]
    old_s, old_t = method.memory_student.clone(), method.memory_teacher.clone()
    x, y, index = batch()
    d.eval()  # BN in eval mode: the embeddings below are the ones the method saw
    with torch.no_grad():
        v_s = F.normalize(method.embed_student(stage_features(d.student, x)[2]), dim=1)
        v_t = F.normalize(method.embed_teacher(stage_features(d.teacher, x)[2]), dim=1)
    d.forward_train(x, y, epoch=0, step=0, index=index)
    assert (method.normalisers > 0).all()
    rest = torch.ones(64, dtype=torch.bool)
    rest[index] = False
    for bank, old, v in ((method.memory_student, old_s, v_s), (method.memory_teacher, old_t, v_t)):
        torch.testing.assert_close(bank[index], F.normalize(0.5 * old[index] + 0.5 * v, dim=1))
        assert torch.equal(bank[rest], old[rest])
    # a checkpoint round trip restores banks and constants exactly, and training goes on alike
    d.train()
    state = {k: v.clone() for k, v in d.trainable_state_dict().items()}
    assert {"methods.0.memory_student", "methods.0.memory_teacher"} <= set(state)
    other = distiller("crd", student, seed=3)
    other.teacher.load_state_dict(d.teacher.state_dict())  # a resumed run loads the same teacher
    other.load_trainable_state_dict(state)
    theirs = other.methods[0]
    for key in ("memory_student", "memory_teacher", "normalisers"):
        assert torch.equal(getattr(theirs, key), getattr(method, key))
    x2, y2, index2 = batch(seed=2)
    results = []
    for dd in (d, other):
        torch.manual_seed(11)
        results.append(dd.forward_train(x2, y2, epoch=1, step=1, index=index2)[1]["crd"])
    assert results[0].item() == results[1].item()
    with pytest.raises(ValueError, match="index"):
        d.forward_train(x2, y2, epoch=1, step=2, index=None)


def test_reviewkd_warms_up_and_fuses_to_the_teacher_shapes():
    d = distiller("reviewkd", "ShuffleV2")
    method = d.methods[0]
    assert (method.options.warmup_epochs, method.options.warmup_iters) == (20, 0)
    x, y, index = batch(4)
    d.eval()
    terms = [d.forward_train(x, y, epoch=e, step=0, index=index)[1]["reviewkd"] for e in (0, 30)]
    assert terms[0].item() == pytest.approx(0.05 * terms[1].item(), rel=1e-5)
    from ckd.methods.base import Batch
    from ckd.methods.views import run_network

    b = Batch(run_network(d.student, x, True), y, lambda: d.teacher_outputs(x))
    shapes_out = [tuple(f.shape) for f in method.fused(b)]
    assert shapes_out == [(4, 64, 32, 32), (4, 128, 16, 16), (4, 256, 8, 8), (4, 256, 1, 1)]


def _small(*names: str, seed: int = 0) -> Distiller:
    torch.manual_seed(seed)
    s, t = create_model("resnet8", num_classes=10), create_model("resnet14", num_classes=10)
    setup = Setup(10, 64, shapes("resnet8", s), shapes("resnet14", t))
    return Distiller(s, t, [METHODS.get(n)(METHODS.get(n).Options(), setup) for n in names])


def test_first_batch_reads_preactivations_without_side_effects():
    """Pre-activations come from the distiller's one forward of each network: BN statistics move
    as for one forward, and every batch (the first included) gives the same term."""
    x, y, index = batch(4)
    d = _small("ofd")
    reference = copy.deepcopy(d.student).train()
    with torch.no_grad():
        reference(x)
    d.train()
    d.forward_train(x, y, epoch=0, step=0, index=index)
    mine, theirs = d.student.state_dict(), reference.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    d = _small("ofd")
    d.eval()
    first = d.forward_train(x, y, epoch=0, step=0, index=index)[1]["ofd"]
    second = d.forward_train(x, y, epoch=0, step=1, index=index)[1]["ofd"]
    assert first.item() == second.item() > 0
    # a method that asks for the teacher after another one did still gets its pre-activations
    alone, after_kd = _small("reviewkd"), _small("kd", "reviewkd")
    alone.eval(), after_kd.eval()
    want = alone.forward_train(x, y, epoch=30, step=0, index=index)[1]["reviewkd"]
    for step in range(2):
        got = after_kd.forward_train(x, y, epoch=30, step=step, index=index)[1]["reviewkd"]
        assert got.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["ofd", "reviewkd"])
def test_teacher_outputs_given_to_the_batch(name):
    """The trainer may give a batch the teacher's outputs computed elsewhere, or cached ones
    (the teacher network then does not run): the pre-activations are still read, as ordinary
    tensors, and the term is the same."""
    x, y, index = batch(4)
    want = _small(name).eval().forward_train(x, y, epoch=30, step=0, index=index)[1][name]
    d = _small(name).eval()
    cached = d.teacher_outputs(x)
    for source in (lambda: d.teacher_outputs(x), lambda: d.teacher_outputs(x), cached, cached):
        got = d.forward_train(x, y, teacher=source, epoch=30, step=0, index=index)[1][name]
        got.backward()  # no inference tensor was saved for backward
        assert got.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_terms_stay_float32_under_bf16_autocast(name):
    d = _small(name).train()
    x, y, index = batch(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, terms = d.forward_train(x, y, epoch=30, step=0, index=index)
    assert logits.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 and v.isfinite() for v in terms.values())
    sum(terms.values()).backward()
    for buffer in d.methods[0].buffers():  # CRD's banks and constants, BN statistics
        assert buffer.dtype in (torch.float32, torch.int64)


def test_no_hooks_stay_on_the_networks():
    d = _small("ofd", "reviewkd")
    x, y, index = batch(4)
    d.forward_train(x, y, epoch=0, step=0, index=index)
    modules = (*d.student.modules(), *d.teacher.modules())
    assert not [m for m in modules if m._forward_hooks]


def test_ofd_refuses_a_teacher_without_named_bns():
    s, t = create_model("resnet8", num_classes=10), create_model("ShuffleV2", num_classes=10)
    setup = Setup(10, 64, shapes("resnet8", s), shapes("ShuffleV2", t))
    with pytest.raises(ValueError, match="preact_bn_names"):
        Distiller(s, t, [METHODS.get("ofd")(METHODS.get("ofd").Options(), setup)])


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("ofd", "connector_kernel", 2),
        ("vid", "eps", 0.0),
        ("crd", "nce_m", 1.5),
        ("crd", "nce_k", 0),
        ("reviewkd", "warmup_epochs", -1),
    ],
)
def test_options_validation_names_the_bad_value(name, field, value):
    with pytest.raises(ValueError, match=f"method.{field}"):
        METHODS.get(name).Options(**{field: value}).validate()


def test_shipped_configs_and_the_reviewkd_ckd_combination(tmp_path):
    from ckd.config import load_config
    from ckd.data import dataset_info
    from ckd.tasks.classification import build_distiller

    teacher = tmp_path / "resnet32x4.pth"
    torch.save(create_model("resnet32x4", num_classes=100).state_dict(), teacher)
    over = [f"teacher.checkpoint={teacher}"]
    for name in NAMES:
        cfg = load_config(f"cifar100/{name}/resnet32x4_resnet8x4", over)
        assert cfg.method.name == name and cfg.student.name == "resnet8x4"
        assert (cfg.optim.epochs, cfg.data.batch_size) == (240, 64)
    assert (
        load_config("cifar100/reviewkd/resnet32x4_resnet8x4", over).method.options.w_reviewkd == 5.0
    )
    cfg = load_config("cifar100/reviewkd_ckd/resnet32x4_resnet8x4", over)
    assert [m.name for m in cfg.method.parts()] == ["reviewkd", "ckd"]
    torch.manual_seed(0)
    d = build_distiller(cfg, dataset_info("cifar100"), num_train=64)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(100, (2,))
    d.train()
    logits, terms = d.forward_train(x, y, epoch=0, step=0, index=torch.arange(2))
    assert set(terms) == {"ce", "reviewkd", "ckd"}
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
