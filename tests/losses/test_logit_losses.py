"""Losses: golden values on fixed inputs, agreement with their definitions, and properties."""

from __future__ import annotations

import math

import pytest
import torch

from ckd.losses import ckd_loss, dkd_loss, kd_loss

S = torch.tensor(
    [
        [-3.3775, -3.4571, -0.7517, -1.3016, 1.7965],
        [-4.6653, -1.0241, 5.5590, 1.4043, -0.4731],
        [4.3310, 0.7981, 4.1681, 4.7590, 2.8389],
        [-2.5310, 2.7955, 3.7770, 6.0149, 0.1612],
    ]
)
T = torch.tensor(
    [
        [1.3191, 0.3372, 1.9224, 1.3235, 0.6166],
        [-1.3510, -1.7192, -1.6661, 1.7830, 4.6258],
        [1.5220, -1.7731, -3.9760, 0.5657, -0.2072],
        [-1.4848, -4.4877, -0.5815, 1.3365, 3.9758],
    ]
)
Y = torch.tensor([0, 1, 2, 3])

# Golden values, computed once by this implementation and checked against the float64
# definitions below; a refactor that changes any of them changes what a method computes.
GOLDEN = {
    # (loss, temperature): value
    ("ckd_cross", 0.5): 2.2640743255615234,
    ("ckd_cross", 1.0): 1.764831304550171,
    ("ckd_cross", 2.0): 1.5591137409210205,
    ("ckd_student", 0.5): 2.1470394134521484,
    ("ckd_student", 1.0): 1.7083323001861572,
    ("ckd_student", 2.0): 1.5322515964508057,
    ("kd", 2.0): 4.753458023071289,
    ("kd", 4.0): 5.347470283508301,
    ("dkd", 4.0): 44.24626159667969,
}


def compute(name: str, temperature: float, s=S, t=T, y=Y) -> torch.Tensor:
    if name == "ckd_cross":
        return ckd_loss(s, t, temperature, "cross")
    if name == "ckd_student":
        return ckd_loss(s, t, temperature, "student")
    if name == "kd":
        return kd_loss(s, t, temperature)
    return dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=temperature)


@pytest.mark.parametrize("key", list(GOLDEN))
def test_golden_values(key):
    assert compute(*key).item() == pytest.approx(GOLDEN[key], rel=1e-5, abs=1e-6)
    name, temperature = key
    ref = {
        "ckd_cross": lambda: ref_ckd(S, T, temperature, "cross"),
        "ckd_student": lambda: ref_ckd(S, T, temperature, "student"),
        "kd": lambda: ref_kd(S, T, temperature),
        "dkd": lambda: ref_dkd(S, T, Y, 1.0, 8.0, temperature),
    }[name]()
    assert GOLDEN[key] == pytest.approx(ref, rel=1e-5)


# ---------------------------------------------------------------- definitions, in float64
def _unit(x):
    return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in x]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def _softmax(row, temperature):
    m = max(row)
    e = [math.exp((v - m) / temperature) for v in row]
    z = sum(e)
    return [v / z for v in e]


def ref_ckd(s, t, tau, negatives):
    s, t = _unit(s.double().tolist()), _unit(t.double().tolist())
    b = len(s)
    total = 0.0
    for i in range(b):
        pos = _dot(t[i], s[i]) / tau
        if negatives == "cross":
            others = [_dot(t[i], s[j]) / tau for j in range(b)]
        else:
            others = [pos] + [_dot(s[i], s[j]) / tau for j in range(b) if j != i]
        m = max(others)
        total += -(pos - m - math.log(sum(math.exp(o - m) for o in others)))
    return total / b


def ref_kd(s, t, temp):
    total = 0.0
    for sr, tr in zip(s.double().tolist(), t.double().tolist(), strict=True):
        ps, pt = _softmax(sr, temp), _softmax(tr, temp)
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt, strict=True) if q > 0)
    return total / len(s) * temp**2


def ref_dkd(s, t, y, alpha, beta, temp):
    total = 0.0
    for sr, tr, g in zip(s.double().tolist(), t.double().tolist(), y.tolist(), strict=True):
        ps, pt = _softmax(sr, temp), _softmax(tr, temp)
        bs = [ps[g], sum(p for c, p in enumerate(ps) if c != g)]
        bt = [pt[g], sum(p for c, p in enumerate(pt) if c != g)]
        tckd = sum(q * (math.log(q) - math.log(p)) for p, q in zip(bs, bt, strict=True) if q > 0)
        ns = _softmax([v for c, v in enumerate(sr) if c != g], temp)
        nt = _softmax([v for c, v in enumerate(tr) if c != g], temp)
        nckd = sum(q * (math.log(q) - math.log(p)) for p, q in zip(ns, nt, strict=True) if q > 0)
        total += alpha * tckd + beta * nckd
    return total / len(s) * temp**2


CASES = [(1, 10), (2, 10), (7, 100), (64, 10), (33, 100)]


@pytest.mark.parametrize("batch,classes", CASES)
@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_losses_match_definitions(batch, classes, scale, temperature, dtype):
    g = torch.Generator().manual_seed(batch * 1000 + classes)
    s = (torch.rand(batch, classes, generator=g) * 2 - 1) * scale
    t = (torch.rand(batch, classes, generator=g) * 2 - 1) * scale
    y = torch.randint(classes, (batch,), generator=g)
    s, t = s.to(dtype), t.to(dtype)  # the definitions see the same (rounded) inputs
    checks = [
        (ckd_loss(s, t, temperature, "cross"), ref_ckd(s, t, temperature, "cross")),
        (ckd_loss(s, t, temperature, "student"), ref_ckd(s, t, temperature, "student")),
        (kd_loss(s, t, temperature), ref_kd(s, t, temperature)),
        (dkd_loss(s, t, y, 1.0, 8.0, temperature), ref_dkd(s, t, y, 1.0, 8.0, temperature)),
    ]
    for got, want in checks:
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(want, rel=2e-4, abs=2e-4)


# ---------------------------------------------------------------- properties
@pytest.mark.parametrize(
    "fn",
    [
        lambda s, t: ckd_loss(s, t),
        lambda s, t: ckd_loss(s, t, negatives="student"),
        lambda s, t: kd_loss(s, t),
        lambda s, t: dkd_loss(s, t, torch.arange(s.shape[0]) % s.shape[1]),
    ],
    ids=["ckd", "ckd_student", "kd", "dkd"],
)
def test_gradient_reaches_only_the_student(fn):
    s = torch.randn(8, 10, requires_grad=True)
    t = torch.randn(8, 10, requires_grad=True)
    fn(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_batch_of_one_gives_zero():
    s, t = torch.randn(1, 10, requires_grad=True), torch.randn(1, 10)
    for negatives in ("cross", "student"):
        loss = ckd_loss(s, t, negatives=negatives)
        assert loss.item() == 0.0
        loss.backward()  # still part of the graph


def test_ckd_is_invariant_to_per_sample_positive_scaling():
    s, t = torch.randn(16, 10), torch.randn(16, 10)
    cs, ct = torch.rand(16, 1) * 10 + 0.1, torch.rand(16, 1) * 10 + 0.1
    for negatives in ("cross", "student"):
        assert ckd_loss(s * cs, t * ct, negatives=negatives).item() == pytest.approx(
            ckd_loss(s, t, negatives=negatives).item(), rel=1e-5
        )


def test_ckd_is_invariant_to_reordering_the_batch():
    s, t = torch.randn(16, 10), torch.randn(16, 10)
    perm = torch.randperm(16)
    for negatives in ("cross", "student"):
        assert ckd_loss(s[perm], t[perm], negatives=negatives).item() == pytest.approx(
            ckd_loss(s, t, negatives=negatives).item(), rel=1e-5
        )


def test_ckd_vanishes_for_aligned_separated_samples():
    t = torch.eye(10)[:6] * 5.0  # six orthogonal teacher vectors
    assert ckd_loss(t * 3.0, t, temperature=0.02).item() < 1e-6
    # and a student pointing elsewhere pays for it
    assert ckd_loss(t.roll(1, dims=0), t, temperature=0.02).item() > 10


def test_ckd_released_and_paper_text_forms_differ():
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    assert ckd_loss(s, t, negatives="cross").item() != ckd_loss(s, t, negatives="student").item()


def test_kd_and_dkd_vanish_when_student_equals_teacher_and_ignore_shifts():
    s = torch.randn(8, 10) * 5
    y = torch.arange(8) % 10
    assert kd_loss(s, s).item() == pytest.approx(0.0, abs=1e-6)
    assert dkd_loss(s, s, y).item() == pytest.approx(0.0, abs=1e-5)
    shift = torch.randn(8, 1) * 50
    t = torch.randn(8, 10)
    assert kd_loss(s + shift, t).item() == pytest.approx(kd_loss(s, t).item(), rel=1e-4)
    assert dkd_loss(s + shift, t, y).item() == pytest.approx(dkd_loss(s, t, y).item(), rel=1e-4)


def test_dkd_parts_recompose_kd():
    # Zhao et al., eq. 5: KD = TCKD + (1 - p_t) * NCKD, p_t the teacher's target probability.
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    y = torch.arange(6)
    temp = 2.0
    tckd = dkd_loss(s, t, y, alpha=1.0, beta=0.0, temperature=temp)
    pt_other = 1 - torch.softmax(t / temp, 1)[torch.arange(6), y]
    per_sample = [
        dkd_loss(s[i : i + 1], t[i : i + 1], y[i : i + 1], 0.0, 1.0, temp) * pt_other[i]
        for i in range(6)
    ]
    decomposed = tckd + torch.stack(per_sample).mean()
    assert decomposed.item() == pytest.approx(kd_loss(s, t, temp).item(), rel=1e-4)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ckd_loss(torch.randn(4, 10), torch.randn(4, 9)), "same shape"),
        (lambda: ckd_loss(torch.randn(4), torch.randn(4)), r"\[B, C\]"),
        (lambda: ckd_loss(torch.randn(4, 10), torch.randn(4, 10), 0.0), "temperature"),
        (lambda: ckd_loss(torch.randn(4, 10), torch.randn(4, 10), negatives="x"), "negatives"),
        (lambda: kd_loss(torch.randn(4, 10), torch.randn(4, 10), -1.0), "temperature"),
        (lambda: dkd_loss(torch.randn(4, 10), torch.randn(4, 10), torch.zeros(3)), "target"),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_losses_stay_float32_under_autocast():
    s, t, y = torch.randn(16, 100), torch.randn(16, 100), torch.arange(16)
    plain = [ckd_loss(s, t), kd_loss(s, t), dkd_loss(s, t, y)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = [ckd_loss(s, t), kd_loss(s, t), dkd_loss(s, t, y)]
    assert [u.item() for u in under] == [p.item() for p in plain]
