"""This project computes what the official CKD code computes: its fixtures, recorded from that
code by ``tests/fixtures/record_reference.py`` (see there for how and on what), hold

- for every model of the reference zoo: logits, pooled embedding, stage features and the
  pre-activation features OFD and ReviewKD read;
- for each of the 14 methods on seven teacher/student pairs (three in the default suite, the
  others ``slow``): the cross-entropy and distillation terms and the student's gradient on one
  batch, in train mode, at the reference's epoch 5 (so warm-ups are checked too).

Tolerances, per quantity (measured differences in the fixtures' README line of each test):

- zoo outputs: 1e-4 of each sample's largest entry. Both sides run the same float32 operations
  in eval mode, but this project reads features through hooks and may order reductions
  differently (oneDNN, vector width), so agreement is to float32 rounding through up to 110
  layers, not bit for bit.
- loss terms: relative ``TERM_RTOL`` per method: 2e-6 where the term is a plain reduction; more
  where it is a small difference of large numbers (PKT: a KL of two nearly equal distributions,
  weighted 3e4; RKD: distances normalised by their mean; CRD: 64 exponentials of cosines / 0.07;
  KDSVD: an SVD); each is far below what a wrong feature or a missing ReLU changes (10% or more).
- gradients: per parameter tensor, its norm and its projection on a fixed direction, within
  ``GRAD_RTOL`` of that tensor's gradient norm plus 1e-6 of the whole gradient's (so tensors
  whose gradient is float32 noise do not decide).

These hold on any x86-64 CPU (AVX2 or AVX-512): they allow ~100x the rounding differences seen
between the two implementations on one machine.
"""

from __future__ import annotations

import pytest
import torch

from ckd.methods import METHODS, Distiller, Setup
from ckd.methods.views import network_shapes, run_network
from ckd.models import create_model, load_weights
from tests import reference_pairs as rp
from tests.zoo_fill import fill_state, named_shapes

pytestmark = pytest.mark.usefixtures("one_thread")

# ----------------------------------------------------------------------------- tolerances
ZOO_RTOL = 1e-4
CE_RTOL = 1e-5  # measured: equal (0) on every pair
# (relative, absolute) per method; measured (largest over the pairs on an AVX-512 EPYC) in [].
TERM_TOL = {
    **dict.fromkeys(rp.METHODS, (1e-5, 0.0)),  # [<= 1.6e-6]
    "kd": (1e-5, 1e-5),  # KL of nearly equal distributions: [8e-7 absolute on 0.0076]
    "dkd": (1e-5, 1e-5),  # [2.4e-6 absolute on 0.017]
    "pkt": (5e-3, 0.0),  # 3e4 x a KL of nearly equal similarity distributions: [5.5e-4]
    "kdsvd": (1e-5, 1e-9),  # tiny terms (4e-4) from SVDs: [6.6e-8]
}
GRAD_RTOL = 1e-3  # per tensor, of its gradient norm [3e-6], plus 1e-6 of the whole gradient's

_FIXTURES: dict[str, dict[str, torch.Tensor]] = {}


def fixture(name: str) -> dict[str, torch.Tensor]:
    if name not in _FIXTURES:
        _FIXTURES[name] = torch.load(rp.fixture_path(name), weights_only=True)
    return _FIXTURES[name]


def filled(name: str, extra: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """``name`` with ``fill_state`` weights (and ``extra`` buffers), loaded strictly."""
    model = create_model(name, num_classes=rp.NUM_CLASSES)
    state = fill_state(named_shapes(model.state_dict()))
    state.update(extra or {})
    return load_weights(model, state, strict=True)


# ----------------------------------------------------------------------------- zoo
@pytest.mark.parametrize("name", rp.ZOO)
def test_zoo_features_and_preactivations_are_the_references(name):
    ref = fixture("zoo")
    model = filled(name).eval()
    with torch.no_grad():
        out = run_network(model, rp.images(2, 30), features=True, preact=True)
    assert rp.close_summary(out.logits, ref[f"{name}/logits"].double(), ZOO_RTOL), "logits"
    assert rp.close_summary(out.embedding, ref[f"{name}/embedding"].double(), ZOO_RTOL)
    stages = [k for k in ref if k.startswith(f"{name}/feat")]
    assert len(out.feats) == len(stages) == len(out.preact)
    for i, f in enumerate(out.feats):
        want = ref[f"{name}/feat{i}"]
        got = rp.map_summary(f, f"{name}/feat{i}")
        assert rp.close_summary(got, want.double(), ZOO_RTOL), f"stage feature {i}"
    # [0] is the stem, which no method reads; the reference's MobileNetV2 names none
    preact = [k for k in ref if k.startswith(f"{name}/preact")]
    assert len(preact) == (0 if name == "MobileNetV2" else len(stages) - 1)
    for i in range(1, len(preact) + 1):
        got = rp.map_summary(out.preact[i], f"{name}/preact{i}")
        want = ref[f"{name}/preact{i}"].double()
        assert rp.close_summary(got, want, ZOO_RTOL), f"pre-activation {i}"


# ----------------------------------------------------------------------------- methods
def distiller(pair: str, method: str) -> Distiller:
    """This project's distiller for the pair with the fixture's weights: ``fill_state`` of the
    student, of the teacher with its calibrated BN statistics, and of the method's modules."""
    t_name, s_name = rp.PAIRS[pair]
    bn = {k.split("/", 1)[1]: v for k, v in fixture(pair).items() if k.startswith("teacher_bn/")}
    student, teacher = filled(s_name), filled(t_name, bn)
    blank = torch.zeros(2, 3, 32, 32)
    setup = Setup(
        rp.NUM_CLASSES,
        rp.CRD_NUM_DATA,
        network_shapes(student, rp.NUM_CLASSES, blank),
        network_shapes(teacher, rp.NUM_CLASSES, blank),
    )
    cls = METHODS.get(method)
    module = cls(cls.Options(**rp.OPTIONS.get(method, {})), setup)
    state = module.state_dict()
    shapes = [e for e in named_shapes(state) if not rp.unfilled(e[0])]
    state.update(fill_state(shapes))
    module.load_state_dict(state)
    return Distiller(student, teacher, [module])


def run(pair: str, method: str, monkeypatch) -> tuple[dict[str, torch.Tensor], Distiller]:
    d = distiller(pair, method)
    x, y, index = rp.batch()
    if method == "crd":  # the reference's bank rows for the batch
        rows = rp.crd_rows(index)
        monkeypatch.setattr("ckd.methods.crd.draw_negatives", lambda *a: rows[:, 1:])
    d.train()
    _, terms = d.forward_train(x, y, epoch=rp.REFERENCE_EPOCH - 1, step=0, index=index)
    torch.stack(list(terms.values())).sum().backward()
    return terms, d


def check_method(pair: str, method: str, monkeypatch) -> None:
    ref = fixture(pair)
    terms, d = run(pair, method, monkeypatch)
    ce = terms.pop("ce").item()
    kd = sum(v.item() for v in terms.values())  # RKD: its distance and angle terms
    want_ce, want_kd = ref[f"{method}/loss_ce"].item(), ref[f"{method}/loss_kd"].item()
    assert ce == pytest.approx(want_ce, rel=CE_RTOL), "cross-entropy"
    rel, atol = TERM_TOL[method]
    assert kd == pytest.approx(want_kd, rel=rel, abs=atol), (method, kd, want_kd)
    named = list(d.student.named_parameters())
    assert torch.equal(rp.key_codes([k for k, _ in named]), ref[f"{method}/keys"])
    got = rp.grad_summary([(k, p.grad) for k, p in named])
    want = ref[f"{method}/grad"]
    total = want[:, 0].norm()
    allowed = GRAD_RTOL * want[:, 0] + 1e-6 * total
    bad = ((got - want).abs() > allowed[:, None]).any(dim=1)
    worst = ((got - want).abs() / want[:, :1].clamp_min(1e-30)).max().item()
    assert not bad.any(), (
        f"{method} on {pair}: the gradient of {int(bad.sum())} student tensors differs, "
        f"first {named[int(bad.nonzero()[0])][0]}; worst relative {worst:.3g}"
    )


# The reference cannot run KDSVD on maps of other sizes (its SVD vectors then differ in
# length) nor OFD on its ShuffleV1 (no get_stage_channels) or MobileNetV2 (no preact_feats)
# students; this project runs them (pooling; its own taps), unchecked by these fixtures.
UNSUPPORTED = {
    (pair, method)
    for pair, (_, student) in rp.PAIRS.items()
    if student in ("ShuffleV1", "MobileNetV2")
    for method in ("kdsvd", "ofd")
}


def cases(pairs: list[str]) -> list[tuple[str, str]]:
    return [(p, m) for p in pairs for m in rp.METHODS if (p, m) not in UNSUPPORTED]


def test_the_fixtures_cover_every_method_the_reference_runs():
    for pair in rp.PAIRS:
        ref = fixture(pair)
        for method in rp.METHODS:
            recorded = f"{method}/grad" in ref
            assert recorded == ((pair, method) not in UNSUPPORTED), (pair, method)
            assert recorded != (f"{method}/unsupported" in ref)


@pytest.mark.parametrize(("pair", "method"), cases(list(rp.FAST_PAIRS)))
def test_terms_and_gradients_are_the_references(pair, method, monkeypatch):
    check_method(pair, method, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize(("pair", "method"), cases([p for p in rp.PAIRS if p not in rp.FAST_PAIRS]))
def test_terms_and_gradients_are_the_references_on_more_pairs(pair, method, monkeypatch):
    check_method(pair, method, monkeypatch)
