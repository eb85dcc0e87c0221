"""The losses of OFD, VID, CRD and ReviewKD (HCL): golden values checked against float64
definitions, and their properties (the four methods: tests/methods/test_ofd_vid_crd_reviewkd.py;
the zoo's pre-activation taps they read: tests/models/test_preact_taps.py)."""

from __future__ import annotations

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
