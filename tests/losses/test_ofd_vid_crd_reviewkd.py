"""OFD, VID, CRD and ReviewKD: golden values of the losses checked against float64 definitions,
their properties, the zoo's pre-activation taps, and the four methods on resnet32x4 ->
resnet8x4 / ShuffleV2 (training steps, frozen teacher, method parameters, state round trip)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from ckd.losses import (
    crd_loss,
    crd_memory_update,
    crd_normalisers,
    crd_scores,
    hcl_loss,
    nce_loss,
    ofd_loss,
    ofd_margin,
    ofd_partial_l2,
    vid_log_scale_init,
    vid_loss,
)
from ckd.methods import METHODS, Distiller, Outputs, Setup
from ckd.methods.base import network_shapes
from ckd.models import FeatureExtractor, create_model, stage_features
from ckd.models.common import channel_shuffle
from tests.descent import assert_descends


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small batches gain nothing from threads, and on a busy machine threads spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- fixed inputs
def wave(*shape: int, phase: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Deterministic float32 values (no RNG): ``scale sin(1.37 i + p) + 0.25 cos(0.31 i + 2p)``."""
    i = torch.arange(math.prod(shape), dtype=torch.float64)
    x = scale * torch.sin(1.37 * i + phase) + 0.25 * torch.cos(0.31 * i + 2 * phase)
    return x.float().reshape(shape)


BN_WEIGHT = torch.tensor([1.0, -0.5, 2.0, 0.3, 0.8])
BN_BIAS = torch.tensor([0.5, -1.0, 0.0, 1.5, -0.2])  # channel 3: P(x < 0) < 1e-3 -> -3 sigma
OFD_S = [wave(2, 3, 4, 4, phase=0.1), wave(2, 2, 2, 2, phase=0.7, scale=2.0)]
OFD_T = [wave(2, 3, 8, 8, phase=1.0, scale=1.5), wave(2, 2, 2, 2, phase=2.0)]
OFD_M = [ofd_margin(BN_WEIGHT[:3], BN_BIAS[:3]), ofd_margin(BN_WEIGHT[3:], BN_BIAS[3:])]
VID_MU, VID_T = wave(2, 3, 2, 2, phase=0.3), wave(2, 3, 4, 4, phase=1.1, scale=1.2)
VID_ALPHA = torch.tensor([0.2, -1.0, 1.5])
HCL_S = [wave(2, 2, 8, 8, phase=0.2), wave(2, 3, 2, 2, phase=0.4), wave(2, 4, 1, 1, phase=0.6)]
HCL_T = [wave(2, 2, 8, 8, phase=1.2), wave(2, 3, 2, 2, phase=1.4), wave(2, 4, 1, 1, phase=1.6)]
CRD_S = F.normalize(wave(2, 4, phase=0.5), dim=1)
CRD_T = F.normalize(wave(2, 4, phase=2.5), dim=1)
CRD_MS = F.normalize(wave(6, 4, phase=1.0), dim=1)  # memory banks: N = 6 rows of D = 4
CRD_MT = F.normalize(wave(6, 4, phase=3.0), dim=1)
CRD_IDX = torch.tensor([[1, 0, 4, 5], [3, 2, 2, 0]])  # own row first, K = 3 negatives

# Golden values, computed once by this implementation and checked against the float64
# definitions below; a refactor that changes any of them changes what a method computes.
GOLDEN = {
    "ofd_margin": [-0.6410777568817139, -1.0276238918304443, -1.5957691669464111,
                   -0.9000000357627869, -0.7166715264320374],
    "ofd": 32.1701774597168,
    "vid": 0.40483295917510986,
    "hcl": 1.1616852283477783,
    "crd_z": [13944.5654296875, 76115.828125],
    "crd": 25.58576202392578,
}  # fmt: skip


# ----------------------------------------------------------------------------- float64 definitions
def _phi_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def ref_margin(gamma: float, beta: float) -> float:
    s, m = abs(gamma), beta
    if _phi_cdf(-m / s) > 1e-3:
        return m - s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / _phi_cdf(-m / s)
    return -3 * s


def _block_mean(x: list, size: int) -> list:
    """Average-pool nested lists [B][C][H][W] to size x size (H divisible by size)."""
    h = len(x[0][0])
    k = h // size
    return [
        [
            [
                [
                    sum(ch[i * k + a][j * k + c] for a in range(k) for c in range(k)) / (k * k)
                    for j in range(size)
                ]
                for i in range(size)
            ]
            for ch in img
        ]
        for img in x
    ]


def _flat(x: list) -> list[float]:
    return [v for img in x for ch in img for row in ch for v in row]


def ref_ofd(students, teachers, margins) -> float:
    total, n = 0.0, len(students)
    for i, (s, t, m) in enumerate(zip(students, teachers, margins, strict=True)):
        s, t, m = s.tolist(), t.tolist(), m.tolist()
        if len(t[0][0]) != len(s[0][0]):
            t = _block_mean(t, len(s[0][0]))
        stage = 0.0
        for b in range(len(s)):
            for c in range(len(s[0])):
                for sv, tv in zip(_flat([[s[b][c]]]), _flat([[t[b][c]]]), strict=True):
                    if tv > 0 or (m[c] < tv <= 0 and sv > tv):
                        stage += (sv - tv) ** 2
                    elif tv <= m[c] and sv > m[c]:
                        stage += (sv - m[c]) ** 2
        total += stage / len(s) / 2 ** (n - 1 - i)
    return total


def ref_vid(mu, target, alpha, eps=1e-5) -> float:
    mu, alpha = mu.tolist(), alpha.tolist()
    t = _block_mean(target.tolist(), len(mu[0][0]))
    terms = []
    for b in range(len(mu)):
        for c in range(len(mu[0])):
            var = math.log1p(math.exp(alpha[c])) + eps
            for mv, tv in zip(_flat([[mu[b][c]]]), _flat([[t[b][c]]]), strict=True):
                terms.append(0.5 * ((mv - tv) ** 2 / var + math.log(var)))
    return sum(terms) / len(terms)


def _mse(a: list, b: list) -> float:
    fa, fb = _flat(a), _flat(b)
    return sum((x - y) ** 2 for x, y in zip(fa, fb, strict=True)) / len(fa)


def ref_hcl(students, teachers) -> float:
    total = 0.0
    for s, t in zip(students, teachers, strict=True):
        s, t = s.tolist(), t.tolist()
        h = len(s[0][0])
        loss, w, weights = _mse(s, t), 1.0, 1.0
        for level in (4, 2, 1):
            if level < h:
                w /= 2
                loss += w * _mse(_block_mean(s, level), _block_mean(t, level))
                weights += w
        total += loss / weights
    return total


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def ref_crd(v_s, v_t, mem_s, mem_t, idx, tau, z=None) -> tuple[float, list[float]]:
    v_s, v_t, mem_s, mem_t, idx = (x.tolist() for x in (v_s, v_t, mem_s, mem_t, idx))
    n, k = len(mem_s), len(idx[0]) - 1
    sc_s = [[math.exp(_dot(mem_t[r], v_s[b]) / tau) for r in idx[b]] for b in range(len(idx))]
    sc_t = [[math.exp(_dot(mem_s[r], v_t[b]) / tau) for r in idx[b]] for b in range(len(idx))]
    if z is None:
        z = [n * sum(map(sum, sc)) / (len(sc) * len(sc[0])) for sc in (sc_s, sc_t)]
    noise, eps = k / n, 1e-7
    loss = 0.0
    for sc, zz in ((sc_s, z[0]), (sc_t, z[1])):
        for row in sc:
            p = [v / zz for v in row]
            loss -= math.log(p[0] / (p[0] + noise + eps)) / len(sc)
            loss -= sum(math.log(noise / (q + noise + eps)) for q in p[1:]) / len(sc)
    return loss, z


# ----------------------------------------------------------------------------- golden values
def test_ofd_margin_golden_and_definition():
    got = torch.cat(OFD_M).tolist()
    assert got == pytest.approx(GOLDEN["ofd_margin"], rel=1e-6, abs=1e-7)
    want = [ref_margin(g, b) for g, b in zip(BN_WEIGHT.tolist(), BN_BIAS.tolist(), strict=True)]
    assert GOLDEN["ofd_margin"] == pytest.approx(want, rel=1e-6)
    assert all(m <= 0 for m in got)
    # beta = 0: E[x | x < 0] = -sigma sqrt(2 / pi); negligible negative mass: -3 sigma
    assert got[2] == pytest.approx(-2.0 * math.sqrt(2 / math.pi), rel=1e-6)
    assert got[3] == pytest.approx(-0.9, rel=1e-6)


def test_ofd_golden_and_definition():
    got = ofd_loss(OFD_S, OFD_T, OFD_M).item()
    assert got == pytest.approx(GOLDEN["ofd"], rel=1e-5)
    assert GOLDEN["ofd"] == pytest.approx(ref_ofd(OFD_S, OFD_T, OFD_M), rel=1e-5)


def test_vid_golden_and_definition():
    got = vid_loss(VID_MU, VID_T, VID_ALPHA, 1e-5).item()
    assert got == pytest.approx(GOLDEN["vid"], rel=1e-5)
    assert GOLDEN["vid"] == pytest.approx(ref_vid(VID_MU, VID_T, VID_ALPHA), rel=1e-5)


def test_hcl_golden_and_definition():
    got = hcl_loss(HCL_S, HCL_T).item()
    assert got == pytest.approx(GOLDEN["hcl"], rel=1e-5)
    assert GOLDEN["hcl"] == pytest.approx(ref_hcl(HCL_S, HCL_T), rel=1e-5)


def test_crd_golden_and_definition():
    z = crd_normalisers(CRD_S, CRD_T, CRD_MS, CRD_MT, CRD_IDX, 0.07)
    assert z.tolist() == pytest.approx(GOLDEN["crd_z"], rel=1e-5)
    got = crd_loss(CRD_S, CRD_T, CRD_MS, CRD_MT, CRD_IDX, z, 0.07).item()
    assert got == pytest.approx(GOLDEN["crd"], rel=1e-5)
    want, want_z = ref_crd(CRD_S, CRD_T, CRD_MS, CRD_MT, CRD_IDX, 0.07)
    assert GOLDEN["crd_z"] == pytest.approx(want_z, rel=1e-5)
    assert GOLDEN["crd"] == pytest.approx(want, rel=1e-5)


def test_crd_scores_gathered_and_dense_agree():
    """A bank larger than (1+K) x D is read row by row, a small one through all similarities."""
    bank = F.normalize(wave(40, 4, phase=0.9), dim=1)  # 40 > 4 draws x 4 dims: row gathering
    idx = torch.tensor([[7, 39, 0, 12], [21, 3, 3, 38]])
    want = [
        [math.exp(_dot(bank[r].tolist(), CRD_S[b].tolist()) / 0.5) for r in idx[b]] for b in (0, 1)
    ]
    torch.testing.assert_close(crd_scores(CRD_S, bank, idx, 0.5), torch.tensor(want))
    small = crd_scores(CRD_S, CRD_MT, CRD_IDX, 0.5)  # 6 <= 16: the dense path
    want = [
        [math.exp(_dot(CRD_MT[r].tolist(), CRD_S[b].tolist()) / 0.5) for r in CRD_IDX[b]]
        for b in (0, 1)
    ]
    torch.testing.assert_close(small, torch.tensor(want))
    probs = small / 3.0
    assert nce_loss(probs, 6).item() == pytest.approx(
        -sum(
            math.log(p[0] / (p[0] + 0.5 + 1e-7))
            + sum(math.log(0.5 / (q + 0.5 + 1e-7)) for q in p[1:])
            for p in probs.tolist()
        )
        / 2,
        rel=1e-5,
    )


def test_crd_memory_update_is_a_normalised_momentum_mix():
    rows, new = CRD_MS[:2], CRD_S
    got = crd_memory_update(rows, new, 0.5)
    mix = [
        [0.5 * a + 0.5 * b for a, b in zip(r, v, strict=True)]
        for r, v in zip(rows.tolist(), new.tolist(), strict=True)
    ]
    want = [[x / math.sqrt(sum(y * y for y in m)) for x in m] for m in mix]
    torch.testing.assert_close(got, torch.tensor(want))


# ----------------------------------------------------------------------------- loss properties
def _one(value: float) -> torch.Tensor:
    return torch.tensor(value).view(1, 1, 1, 1)


@pytest.mark.parametrize(
    ("s", "t", "want"),
    [
        (0.3, 1.0, 0.49),  # teacher positive: (s - t)^2 whatever s
        (2.0, 1.0, 1.0),
        (-0.6, -0.5, 0.0),  # margin < t <= 0 and s <= t: ignored
        (-0.2, -0.5, 0.09),  # margin < t <= 0 and s > t: (s - t)^2
        (-2.0, -1.5, 0.0),  # t <= margin and s <= margin: ignored
        (-0.8, -1.5, 0.04),  # t <= margin and s > margin: (s - margin)^2
        (0.5, -3.0, 2.25),
    ],
)
def test_ofd_partial_l2_mask(s, t, want):
    margin = torch.tensor([-1.0])
    assert ofd_partial_l2(_one(s), _one(t), margin).item() == pytest.approx(want, abs=1e-6)


def test_ofd_weights_stages_and_pools_the_teacher():
    s, t, m = OFD_S[0], OFD_T[0], OFD_M[0]
    single = ofd_partial_l2(s, F.avg_pool2d(t, 2), m)
    assert ofd_partial_l2(s, t, m).item() == pytest.approx(single.item(), rel=1e-6)
    two = ofd_loss([s, s], [t, t], [m, m])  # the shallower stage counts half
    assert two.item() == pytest.approx(1.5 * single.item(), rel=1e-6)


def test_hcl_is_zero_for_identical_maps_and_positive_otherwise():
    assert hcl_loss(HCL_S, [x.clone() for x in HCL_S]).item() == 0.0
    assert hcl_loss(HCL_S[0], HCL_T[0]).item() > 0


def test_vid_log_scale_init_gives_the_initial_variance():
    alpha = vid_log_scale_init(5.0, 1e-5)
    assert F.softplus(torch.tensor(alpha, dtype=torch.float64)).item() + 1e-5 == pytest.approx(5.0)
    with pytest.raises(ValueError, match="init_pred_var"):
        vid_log_scale_init(1e-6, 1e-5)


def _losses(s: list[torch.Tensor], t: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each loss with student-side inputs ``s`` and teacher-side inputs ``t``."""
    return {
        "ofd": ofd_loss([s[0]], [t[0]], [OFD_M[0]]),
        "vid": vid_loss(s[1], t[1], VID_ALPHA),
        "hcl": hcl_loss([s[2]], [t[2]]),
        "crd": crd_loss(s[3], t[3], CRD_MS, CRD_MT, CRD_IDX, torch.tensor([50.0, 60.0])),
    }


def test_losses_are_float32_and_send_no_gradient_to_the_teacher_side():
    s = [x.clone().bfloat16().requires_grad_() for x in (OFD_S[0], VID_MU, HCL_S[0], CRD_S)]
    t = [x.clone().bfloat16().requires_grad_() for x in (OFD_T[0], VID_T, HCL_T[0])]
    memory = CRD_MS.clone().requires_grad_()
    values = _losses(s, [*t, CRD_T])
    values["crd_bank"] = crd_loss(s[3], CRD_T, memory, CRD_MT, CRD_IDX, torch.tensor([5.0, 6.0]))
    for name, value in values.items():
        assert value.dtype == torch.float32 and value.dim() == 0, name
    sum(values.values()).backward()
    assert all(x.grad is not None for x in s)
    assert all(x.grad is None for x in t) and memory.grad is None
    # CRD's teacher embedding comes out of the method's own head: it keeps its gradient
    v_t = CRD_T.clone().requires_grad_()
    crd_loss(CRD_S, v_t, CRD_MS, CRD_MT, CRD_IDX, torch.tensor([5.0, 6.0])).backward()
    assert v_t.grad is not None


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ofd_partial_l2(OFD_S[0][0], OFD_T[0], OFD_M[0]), r"\[B, C, H, W\]"),
        (lambda: ofd_partial_l2(OFD_S[0], OFD_T[0], OFD_M[1]), r"margin must be \[C\]"),
        (lambda: ofd_loss(OFD_S, OFD_T[:1], OFD_M), "as many"),
        (lambda: ofd_margin(BN_WEIGHT, BN_BIAS[:2]), r"\[C\]"),
        (lambda: vid_loss(VID_T, VID_MU, VID_ALPHA), "at least as large"),
        (lambda: vid_loss(VID_MU, VID_T, VID_ALPHA[:2]), "log_scale"),
        (lambda: hcl_loss(HCL_S[:2], HCL_T[1:3]), "one shape"),
        (lambda: crd_scores(CRD_S, CRD_MS[:, :3], CRD_IDX, 0.07), r"\[N, D\]"),
        (lambda: crd_scores(CRD_S, CRD_MS, CRD_IDX[:, :1], 0.07), "negative"),
        (lambda: crd_loss(CRD_S, CRD_T, CRD_MS, CRD_MT, CRD_IDX, torch.ones(3)), "normalisers"),
        (lambda: crd_memory_update(CRD_MS, CRD_S, 0.5), r"\[B, D\]"),
    ],
)
def test_bad_shapes_raise_one_line(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


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
    from ckd.methods.base import Batch, run_network

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
