"""Paired differences over seeds and their Student-t intervals (ckd.bench.stats)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckd.bench.stats import paired_by_seed, paired_difference, t_quantile, t_within

# two-sided 95% and 90% factors of Student's t from printed tables (e.g. NIST/SEMATECH)
TABLE = {
    (0.95, 1): 12.706,
    (0.95, 2): 4.303,
    (0.95, 3): 3.182,
    (0.95, 4): 2.776,
    (0.95, 5): 2.571,
    (0.95, 9): 2.262,
    (0.95, 30): 2.042,
    (0.95, 100): 1.984,
    (0.90, 4): 2.132,
    (0.99, 4): 4.604,
}


@pytest.mark.parametrize(("confidence", "df"), sorted(TABLE))
def test_t_quantile_matches_the_printed_tables(confidence, df):
    assert t_quantile(confidence, df) == pytest.approx(TABLE[confidence, df], abs=6e-4)
    assert t_within(t_quantile(confidence, df), df) == pytest.approx(confidence, abs=1e-12)


def test_t_tends_to_the_normal_for_many_degrees_of_freedom():
    assert t_quantile(0.95, 2000) == pytest.approx(1.95996, abs=2e-3)
    assert t_within(1e9, 7) == pytest.approx(1.0)
    assert t_within(0.0, 7) == 0.0


def test_a_hand_computed_interval():
    # d = 2, 3, 1, 1, 3: mean 2, sample sd 1, se 1/sqrt(5); t(0.975, 4) = 2.7764
    d = paired_difference([72, 74, 71, 73, 75], [70, 71, 70, 72, 72])
    half = 2.7764451 / math.sqrt(5)
    assert (d.mean, d.n) == (pytest.approx(2.0), 5)
    assert d.lo == pytest.approx(2.0 - half) and d.hi == pytest.approx(2.0 + half)
    assert d.shown and d.verdict() == "higher" and str(d) == "+2.00 [+0.76, +3.24]"


def test_one_pair_has_no_interval_and_bad_input_is_refused():
    d = paired_difference([71.0], [70.0])
    assert d.mean == 1.0 and math.isnan(d.lo) and not d.shown
    assert "not tested" in d.verdict()
    with pytest.raises(ValueError, match="length"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no pairs"):
        paired_difference([], [])


def test_pairs_are_matched_by_seed_not_by_position():
    a = {0: 80.0, 1: 82.0, 2: 81.0, 7: 99.0}
    b = {2: 80.0, 1: 81.0, 0: 79.0, 5: 10.0}  # other order; seeds 5 and 7 have no partner
    d = paired_by_seed(a, b)
    assert (d.n, d.mean, d.lo, d.hi) == (3, 1.0, 1.0, 1.0)
    assert paired_by_seed({0: 1.0}, {1: 1.0}) is None


values = st.lists(st.floats(50, 100, allow_nan=False), min_size=2, max_size=12)


@settings(max_examples=60, deadline=None)
@given(values, st.data())
def test_swapping_the_sides_negates_the_interval(a, data):
    b = data.draw(st.lists(st.floats(50, 100), min_size=len(a), max_size=len(a)))
    ab, ba = paired_difference(a, b), paired_difference(b, a)
    assert ba.mean == pytest.approx(-ab.mean, abs=1e-9)
    assert ba.lo == pytest.approx(-ab.hi, abs=1e-9) and ba.hi == pytest.approx(-ab.lo, abs=1e-9)
    assert ab.lo <= ab.mean <= ab.hi


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=6), st.floats(-20, 20))
def test_a_common_shift_changes_nothing(d, shift):
    b = [70.0 + i for i in range(len(d))]
    a = [x + y for x, y in zip(b, d, strict=True)]
    plain = paired_difference(a, b)
    moved = paired_difference([x + shift for x in a], [y + shift for y in b])
    assert moved.mean == pytest.approx(plain.mean, abs=1e-9)
    assert moved.hi - moved.lo == pytest.approx(plain.hi - plain.lo, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=5).filter(lambda d: max(d) - min(d) > 0.01))
def test_the_interval_narrows_with_more_pairs_of_the_same_spread(d):
    b = [75.0] * len(d)
    once = paired_difference([75 + x for x in d], b)
    twice = paired_difference([75 + x for x in d * 2], b * 2)
    thrice = paired_difference([75 + x for x in d * 3], b * 3)
    assert once.hi - once.lo > twice.hi - twice.lo > thrice.hi - thrice.lo > 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 5), min_size=1, max_size=6))
def test_zero_mean_differences_give_an_interval_around_zero(half):
    d = half + [-x for x in half]  # mean 0, not all zero
    r = paired_difference([80 + x for x in d], [80.0] * len(d))
    assert r.mean == pytest.approx(0.0, abs=1e-9)
    assert r.lo < 0 < r.hi and not r.shown
    assert r.verdict() == "no difference shown"
    same = paired_difference([80.0, 81.0, 79.0], [80.0, 81.0, 79.0])
    assert (same.mean, same.lo, same.hi) == (0.0, 0.0, 0.0) and not same.shown
