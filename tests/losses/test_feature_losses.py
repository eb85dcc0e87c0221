"""Feature and relation losses (FitNet, AT, NST, SP, KDSVD, PKT, RKD): golden values on fixed
inputs, agreement with float64 re-statements of the definitions, and properties (their methods:
tests/methods/test_feature_methods.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ckd.losses import (
    at_loss,
    fitnet_loss,
    kdsvd_loss,
    nst_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    sp_loss,
)
from ckd.losses.feature import paired_stages


def fixed(shape, phase: float) -> torch.Tensor:
    """Deterministic, RNG-free float32 values in [-1, 1] (the same on every platform)."""
    x = torch.arange(math.prod(shape), dtype=torch.float64)
    v = torch.sin(0.0137 * x * x + (1.3 + phase) * x + 10 * phase)  # a chirp: no low rank
    return v.reshape(shape).float()


# Student and teacher feature maps: channels differ, the teacher's maps are twice as large.
S_MAPS = (fixed([4, 6, 8, 8], 0.1), fixed([4, 8, 4, 4], 0.2))
T_MAPS = (fixed([4, 5, 16, 16], 0.3), fixed([4, 10, 8, 8], 0.4))
T_MAPS_SAME = (fixed([4, 6, 8, 8], 0.5), fixed([4, 8, 4, 4], 0.6))  # same shapes as S_MAPS
S_EMB, T_EMB = fixed([6, 5], 0.7), fixed([6, 7], 0.8)
S_HINT, T_HINT = fixed([3, 4, 5, 5], 0.9), fixed([3, 4, 5, 5], 1.0)

LOSSES = {
    "fitnet": lambda: fitnet_loss(S_HINT, T_HINT),
    "at": lambda: at_loss(S_MAPS, T_MAPS),
    "at_p4": lambda: at_loss(S_MAPS, T_MAPS, p=4.0),
    "nst": lambda: nst_loss(S_MAPS, T_MAPS),
    "sp": lambda: sp_loss(S_MAPS[1], T_MAPS[1]),
    "kdsvd_width": lambda: kdsvd_loss(S_MAPS, T_MAPS),
    "kdsvd_width_k2": lambda: kdsvd_loss(S_MAPS, T_MAPS, k=2),
    "kdsvd_channel": lambda: kdsvd_loss(S_MAPS, T_MAPS_SAME, vectors="channel"),
    "pkt": lambda: pkt_loss(S_EMB, T_EMB),
    "rkd_distance": lambda: rkd_distance_loss(S_EMB, T_EMB),
    "rkd_distance_squared": lambda: rkd_distance_loss(S_EMB, T_EMB, squared=True),
    "rkd_angle": lambda: rkd_angle_loss(S_EMB, T_EMB),
}

# Golden values, computed once by this implementation and checked against the float64
# definitions below; a refactor that changes any of them changes what a method computes.
GOLDEN = {
    "fitnet": 0.9874061346054077,
    "at": 0.023686574772000313,
    "at_p4": 0.05164595693349838,
    "nst": 0.5232383608818054,
    "sp": 0.0010442971251904964,
    "kdsvd_width": 0.08374650776386261,
    "kdsvd_width_k2": 0.04522569105029106,
    "kdsvd_channel": 0.09678499400615692,
    "pkt": 0.03523431718349457,
    "rkd_distance": 0.08557578176259995,
    "rkd_distance_squared": 0.23283638060092926,
    "rkd_angle": 0.07935519516468048,
}


def reference(name: str) -> float:
    s_maps, t_maps = [m.double().numpy() for m in S_MAPS], [m.double().numpy() for m in T_MAPS]
    return {
        "fitnet": lambda: ref_fitnet(S_HINT, T_HINT),
        "at": lambda: ref_at(s_maps, t_maps, 2.0),
        "at_p4": lambda: ref_at(s_maps, t_maps, 4.0),
        "nst": lambda: ref_nst(s_maps, t_maps),
        "sp": lambda: ref_sp(s_maps[1], t_maps[1]),
        "kdsvd_width": lambda: ref_kdsvd(s_maps, t_maps, 1, "width"),
        "kdsvd_width_k2": lambda: ref_kdsvd(s_maps, t_maps, 2, "width"),
        "kdsvd_channel": lambda: ref_kdsvd(
            s_maps, [m.double().numpy() for m in T_MAPS_SAME], 1, "channel"
        ),
        "pkt": lambda: ref_pkt(S_EMB, T_EMB),
        "rkd_distance": lambda: ref_rkd_distance(S_EMB, T_EMB, False),
        "rkd_distance_squared": lambda: ref_rkd_distance(S_EMB, T_EMB, True),
        "rkd_angle": lambda: ref_rkd_angle(S_EMB, T_EMB),
    }[name]()


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_values(name):
    got = LOSSES[name]()
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(GOLDEN[name], rel=1e-5, abs=1e-7)
    assert GOLDEN[name] == pytest.approx(reference(name), rel=1e-5, abs=1e-7)


def test_rkd_loss_is_the_weighted_sum_of_its_terms():
    want = 25 * GOLDEN["rkd_distance"] + 50 * GOLDEN["rkd_angle"]
    assert rkd_loss(S_EMB, T_EMB).item() == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------- definitions, in float64
def _pool(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Average pooling of [B, C, H, W] to [B, C, h, w] (H, W multiples of h, w)."""
    b, c, hh, ww = x.shape
    assert hh % h == 0 and ww % w == 0
    return x.reshape(b, c, h, hh // h, w, ww // w).mean(axis=(3, 5))


def _match(fs, ft):
    h, w = min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3])
    return _pool(fs, h, w), _pool(ft, h, w)


def _huber(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    return np.where(a < 1.0, 0.5 * x * x, a - 0.5)


def ref_fitnet(s, t):
    return float(np.mean((s.double().numpy() - t.double().numpy()) ** 2))


def ref_at(s_maps, t_maps, p):
    total = 0.0
    for fs, ft in zip(s_maps, t_maps, strict=True):
        fs, ft = _match(fs, ft)
        diffs = []
        for b in range(fs.shape[0]):
            a_s = (np.abs(fs[b]) ** p).mean(axis=0).ravel()
            a_t = (np.abs(ft[b]) ** p).mean(axis=0).ravel()
            diffs.append(a_s / np.linalg.norm(a_s) - a_t / np.linalg.norm(a_t))
        total += float(np.mean(np.square(diffs)))
    return total


def ref_nst(s_maps, t_maps):
    total = 0.0
    for fs, ft in zip(s_maps, t_maps, strict=True):
        fs, ft = _match(fs, ft)
        per_sample = []
        for b in range(fs.shape[0]):
            xs = [c.ravel() / np.linalg.norm(c) for c in fs[b]]
            xt = [c.ravel() / np.linalg.norm(c) for c in ft[b]]

            def mean_kernel(u, v):
                return np.mean([np.dot(a, c) ** 2 for a in u for c in v])

            per_sample.append(mean_kernel(xt, xt) + mean_kernel(xs, xs) - 2 * mean_kernel(xs, xt))
        total += float(np.mean(per_sample))
    return total


def ref_sp(fs, ft):
    b = fs.shape[0]
    gs, gt = fs.reshape(b, -1) @ fs.reshape(b, -1).T, ft.reshape(b, -1) @ ft.reshape(b, -1).T
    gs = gs / np.linalg.norm(gs, axis=1, keepdims=True)
    gt = gt / np.linalg.norm(gt, axis=1, keepdims=True)
    return float(np.sum((gt - gs) ** 2) / b**2)


def _top_vectors(matrix: np.ndarray, n: int):
    """Leading n right singular vectors (columns, unit norm) and unit-norm singular values."""
    _, sv, vt = np.linalg.svd(matrix, full_matrices=False)
    v = vt[:n].T
    sv = sv[:n]
    return v / np.linalg.norm(v, axis=0, keepdims=True), sv / np.linalg.norm(sv)


def ref_kdsvd(s_maps, t_maps, k, vectors):
    total = 0.0
    previous = None
    for fs, ft in zip(s_maps, t_maps, strict=True):
        fs, ft = _match(fs, ft)
        batch = fs.shape[0]
        vs_all, vt_all = [], []
        for b in range(batch):
            if vectors == "width":
                ms, mt = fs[b].reshape(-1, fs.shape[3]), ft[b].reshape(-1, ft.shape[3])
            else:
                ms, mt = fs[b].reshape(fs.shape[1], -1).T, ft[b].reshape(ft.shape[1], -1).T
            vt, svt = _top_vectors(mt, k)
            vs, _ = _top_vectors(ms, k + 3)
            cols_t, cols_s = [], []
            for j in range(vt.shape[1]):
                col = vt[:, j] * (1.0 if vt[np.argmax(np.abs(vt[:, j])), j] >= 0 else -1.0)
                cos = vs.T @ col
                best = int(np.argmax(np.abs(cos)))
                cols_t.append(col * svt[j])
                cols_s.append(vs[:, best] * np.sign(cos[best]) * svt[j])
            vt_all.append(np.stack(cols_t, axis=1))
            vs_all.append(np.stack(cols_s, axis=1))
        if previous is not None:
            for b in range(batch):
                g_s = np.exp(-((vs_all[b][:, None, :] - previous[0][b][None, :, :]) ** 2) / 8)
                g_t = np.exp(-((vt_all[b][:, None, :] - previous[1][b][None, :, :]) ** 2) / 8)
                total += float(np.sum((g_s - g_t) ** 2)) / batch
        previous = (vs_all, vt_all)
    return total


def ref_pkt(s, t, eps=1e-7):
    def probabilities(x):
        x = x.double().numpy()
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
        kernel = (x @ x.T + 1) / 2
        return kernel / kernel.sum(axis=1, keepdims=True)

    ps, pt = probabilities(s), probabilities(t)
    return float(np.mean(pt * np.log((pt + eps) / (ps + eps))))


def ref_rkd_distance(s, t, squared, eps=1e-12):
    def distances(x):
        x = x.double().tolist()
        b = len(x)
        d = [[0.0] * b for _ in range(b)]
        for i, j in itertools.permutations(range(b), 2):
            sq = max(sum((u - v) ** 2 for u, v in zip(x[i], x[j], strict=True)), eps)
            d[i][j] = sq if squared else math.sqrt(sq)
        mean = sum(map(sum, d)) / (b * (b - 1))
        return np.array(d) / mean

    return float(np.mean(_huber(distances(s) - distances(t))))


def ref_rkd_angle(s, t):
    def angles(x):
        x = x.double().numpy()
        b = len(x)
        a = np.zeros((b, b, b))
        for i, j, k in itertools.product(range(b), repeat=3):
            u, v = x[j] - x[i], x[k] - x[i]
            if j != i and k != i:
                a[i, j, k] = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
        return a

    return float(np.mean(_huber(angles(s) - angles(t))))


# ---------------------------------------------------------------- agreement on random inputs
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", [0, 1])
def test_losses_match_definitions(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    s_maps = [
        torch.randn(5, 7, 8, 8, generator=g),
        torch.relu(torch.randn(5, 9, 4, 4, generator=g)),
    ]
    t_maps = [
        torch.randn(5, 3, 8, 8, generator=g),
        torch.relu(torch.randn(5, 4, 8, 8, generator=g)),
    ]
    s_emb, t_emb = torch.randn(7, 6, generator=g) * 3, torch.randn(7, 9, generator=g)
    s_maps, t_maps = [m.to(dtype) for m in s_maps], [m.to(dtype) for m in t_maps]
    s_emb, t_emb = s_emb.to(dtype), t_emb.to(dtype)
    sm, tm = [m.double().numpy() for m in s_maps], [m.double().numpy() for m in t_maps]
    checks = [
        (at_loss(s_maps, t_maps), ref_at(sm, tm, 2.0)),
        (nst_loss(s_maps, t_maps), ref_nst(sm, tm)),
        (sp_loss(s_maps[0], t_maps[0]), ref_sp(sm[0], tm[0])),
        (kdsvd_loss(s_maps, t_maps), ref_kdsvd(sm, tm, 1, "width")),
        (pkt_loss(s_emb, t_emb), ref_pkt(s_emb, t_emb)),
        (rkd_distance_loss(s_emb, t_emb), ref_rkd_distance(s_emb, t_emb, False)),
        (rkd_angle_loss(s_emb, t_emb), ref_rkd_angle(s_emb, t_emb)),
    ]
    for got, want in checks:
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(want, rel=2e-4, abs=1e-6)


def test_losses_compute_in_float32_under_autocast():
    plain = {name: fn().item() for name, fn in LOSSES.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for name, fn in LOSSES.items():
            got = fn()
            assert got.dtype == torch.float32
            assert got.item() == pytest.approx(plain[name], rel=1e-6, abs=1e-9), name


# ---------------------------------------------------------------- properties
def _clone(x, grad=True):
    if isinstance(x, tuple):
        return tuple(m.clone().requires_grad_(grad) for m in x)
    return x.clone().requires_grad_(grad)


PAIRED = {  # name: (loss taking (student, teacher), student input, teacher input)
    "fitnet": (fitnet_loss, S_HINT, T_HINT),
    "at": (at_loss, S_MAPS, T_MAPS),
    "nst": (nst_loss, S_MAPS, T_MAPS),
    "sp": (sp_loss, S_MAPS[0], T_MAPS[0]),
    "kdsvd": (kdsvd_loss, S_MAPS, T_MAPS),
    "kdsvd_channel": (lambda s, t: kdsvd_loss(s, t, vectors="channel"), S_MAPS, T_MAPS_SAME),
    "pkt": (pkt_loss, S_EMB, T_EMB),
    "rkd_distance": (rkd_distance_loss, S_EMB, T_EMB),
    "rkd_angle": (rkd_angle_loss, S_EMB, T_EMB),
}


@pytest.mark.parametrize("name", list(PAIRED))
def test_gradient_reaches_only_the_student(name):
    fn, s, t = PAIRED[name]
    s, t = _clone(s), _clone(t)
    fn(s, t).backward()
    for m in t if isinstance(t, tuple) else (t,):
        assert m.grad is None
    grads = [m.grad for m in (s if isinstance(s, tuple) else (s,))]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("name", list(PAIRED))
def test_zero_when_the_student_is_the_teacher(name):
    fn, s, _ = PAIRED[name]
    assert fn(s, _clone(s, grad=False)).item() == pytest.approx(0.0, abs=1e-6)


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed)))
    return q


def test_at_is_invariant_to_feature_scaling_and_channel_order():
    base = at_loss(S_MAPS, T_MAPS).item()
    scale = torch.tensor([0.5, 2.0, 7.0, 0.1]).view(4, 1, 1, 1)  # per sample
    scaled = tuple(m * scale for m in S_MAPS)
    assert at_loss(scaled, tuple(m * 3.0 for m in T_MAPS)).item() == pytest.approx(base, rel=1e-5)
    shuffled = tuple(m[:, torch.randperm(m.shape[1])] for m in S_MAPS)
    assert at_loss(shuffled, T_MAPS).item() == pytest.approx(base, rel=1e-5)


def test_nst_is_invariant_to_per_channel_scaling_sign_and_order():
    base = nst_loss(S_MAPS, T_MAPS).item()
    changed = []
    for m in S_MAPS:
        c = m.shape[1]
        scale = torch.linspace(0.2, 5.0, c) * torch.tensor([1.0, -1.0]).repeat(c)[:c]
        changed.append((m * scale.view(1, c, 1, 1))[:, torch.randperm(c)])
    assert nst_loss(changed, T_MAPS).item() == pytest.approx(base, rel=1e-5)


def test_sp_is_invariant_to_global_scaling_and_rotation_of_the_activations():
    s, t = S_MAPS[1], T_MAPS[1]
    base = sp_loss(s, t).item()
    assert sp_loss(s * 5.0, t * 0.1).item() == pytest.approx(base, rel=1e-5)
    flat = s.flatten(1)
    rotated = (flat @ _orthogonal(flat.shape[1], 0)).view_as(s)
    assert sp_loss(rotated, t).item() == pytest.approx(base, rel=1e-4)


def test_kdsvd_is_invariant_to_per_sample_scaling_and_negation():
    for vectors, t_maps in (("width", T_MAPS), ("channel", T_MAPS_SAME)):
        base = kdsvd_loss(S_MAPS, t_maps, vectors=vectors).item()
        scale = torch.tensor([0.5, 2.0, 7.0, 0.1]).view(4, 1, 1, 1)
        scaled = [m * scale for m in S_MAPS]
        assert kdsvd_loss(scaled, t_maps, vectors=vectors).item() == pytest.approx(base, rel=1e-4)
        negated_s, negated_t = [-m for m in S_MAPS], [-m for m in t_maps]
        got = kdsvd_loss(negated_s, negated_t, vectors=vectors).item()
        assert got == pytest.approx(base, rel=1e-4)


def test_pkt_is_invariant_to_per_sample_scaling_and_rotation():
    base = pkt_loss(S_EMB, T_EMB).item()
    scale = torch.linspace(0.1, 9.0, S_EMB.shape[0]).view(-1, 1)
    assert pkt_loss(S_EMB * scale, T_EMB).item() == pytest.approx(base, rel=1e-4)
    assert pkt_loss(S_EMB @ _orthogonal(5, 1), T_EMB).item() == pytest.approx(base, rel=1e-4)


def test_rkd_is_invariant_to_rotation_translation_and_scale_of_the_embedding():
    moved = 3.0 * S_EMB @ _orthogonal(5, 2) + torch.tensor([1.0, -2.0, 0.5, 4.0, -1.0])
    for fn in (rkd_distance_loss, rkd_angle_loss, rkd_loss):
        assert fn(moved, T_EMB).item() == pytest.approx(fn(S_EMB, T_EMB).item(), rel=1e-4)
    # and it is not blind: another embedding of the same batch costs more
    assert rkd_loss(S_EMB.roll(1, dims=0) ** 2, S_EMB).item() > 0.1


def test_rkd_batch_of_one_gives_zero_in_the_graph():
    s = torch.randn(1, 4, requires_grad=True)
    loss = rkd_loss(s, torch.randn(1, 3))
    assert loss.item() == 0.0
    loss.backward()


@pytest.mark.parametrize("name", list(PAIRED))
def test_degenerate_student_gives_finite_values_and_gradients(name):
    # an all-zero student (a dead ReLU stage; for KDSVD a zero matrix, whose SVD gradient is
    # not finite without the loss's guard) and a batch of repeated samples
    fn, s, t = PAIRED[name]
    degenerate = [torch.zeros_like]
    if name.startswith(("pkt", "rkd")):
        degenerate.append(lambda m: m[:1].expand_as(m).clone())
    for make_student in degenerate:
        student = tuple(map(make_student, s)) if isinstance(s, tuple) else make_student(s)
        student = _clone(student)
        loss = fn(student, t)
        loss.backward()
        assert torch.isfinite(loss)
        for m in student if isinstance(student, tuple) else (student,):
            assert m.grad is not None and torch.isfinite(m.grad).all()


def test_nst_and_at_pool_the_larger_map():
    # an 8x8 teacher map made of 2x2 constant blocks pools exactly to its 4x4 version
    t_small = fixed([2, 3, 4, 4], 1.1)
    t_big = t_small.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    s = fixed([2, 5, 4, 4], 1.2)
    for fn in (at_loss, nst_loss, kdsvd_loss):
        assert fn([s, s], [t_big, t_big]).item() == pytest.approx(
            fn([s, s], [t_small, t_small]).item(), rel=1e-5
        )


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: fitnet_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, 4)), "same shape"),
        (lambda: at_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, 4)), r"\[B, C, H, W\]"),
        (lambda: at_loss([torch.zeros(2, 3, 4, 4)] * 2, [torch.zeros(2, 3, 4, 4)]), "as many"),
        (lambda: nst_loss(torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4)), "batch size"),
        (lambda: at_loss([], []), "non-empty"),
        (lambda: at_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), p=0), "p must"),
        (lambda: sp_loss(torch.zeros(2, 3), torch.zeros(4, 3)), "batch size"),
        (lambda: sp_loss(torch.zeros(2), torch.zeros(2)), r"\[B, \.\.\.\]"),
        (lambda: kdsvd_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), k=0), "k must"),
        (
            lambda: kdsvd_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), vectors="x"),
            "vectors must",
        ),
        (
            lambda: kdsvd_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4), vectors="channel"),
            "equal channel counts",
        ),
        (lambda: pkt_loss(torch.zeros(2, 3, 1), torch.zeros(2, 3)), r"\[B, D\]"),
        (lambda: pkt_loss(torch.zeros(2, 3), torch.zeros(2, 3), eps=0), "eps must"),
        (lambda: rkd_distance_loss(torch.zeros(2, 3), torch.zeros(3, 3)), "batch size"),
        (lambda: rkd_angle_loss(torch.zeros(4), torch.zeros(4, 3)), r"\[B, D\]"),
    ],
)
def test_bad_inputs_are_one_line_value_errors(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_paired_stages_align_from_the_deepest():
    s, t = list("abcd"), list("ABCDE")
    assert paired_stages(s, t) == (list("bcd"), list("CDE"))
    assert paired_stages(s, list("ABCD")) == (list("bcd"), list("BCD"))
    with pytest.raises(ValueError, match="stage"):
        paired_stages(["a"], ["A", "B"])
