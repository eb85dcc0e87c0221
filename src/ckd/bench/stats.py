"""Paired comparisons over seeds: the mean difference and its Student-t confidence interval.

Two entries of a suite run with the same seed share their training subset, their augmentation
draws, the teacher and the test set, so their accuracies are compared seed by seed: with
``d_k = a_k - b_k`` over the n seeds both have, the interval is

    mean(d) +- t_{(1 + c) / 2, n - 1} * sd(d) / sqrt(n)          (sd with ddof = 1)

the Student-t interval of a mean difference (it assumes the d_k are independent draws of a
roughly normal variable; with 5 seeds that is an assumption, not something the data can check).
A difference is called *shown* only when its interval excludes zero. The t quantile is computed
here from the closed form of the t distribution for an integer number of degrees of freedom
(Abramowitz & Stegun 26.7.3-4), so no statistics package is needed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


def t_within(t: float, df: int) -> float:
    """P(-t < T < t) for Student's t with ``df`` (integer >= 1) degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1; got {df}")
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:  # sin(th) * [1 + 1/2 cos^2 + 1.3/(2.4) cos^4 + ... up to cos^(df-2)]
        term = total = 1.0
        for k in range(2, df, 2):
            term *= c2 * (k - 1) / k
            total += term
        return min(1.0, s * total)
    if df == 1:
        return 2 * theta / math.pi
    # 2/pi * (th + sin(th) * [cos + 2/3 cos^3 + 2.4/(3.5) cos^5 + ... up to cos^(df-2)])
    term = total = math.cos(theta)
    for k in range(3, df - 1, 2):
        term *= c2 * (k - 1) / k
        total += term
    return min(1.0, 2 / math.pi * (theta + s * total))


def t_quantile(confidence: float, df: int) -> float:
    """The t with P(-t < T < t) = ``confidence`` (e.g. 2.776 for 0.95 and 4 degrees of
    freedom): the factor of a two-sided interval."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    lo, hi = 0.0, 1.0
    while t_within(hi, df) < confidence:
        lo, hi = hi, 2 * hi
    for _ in range(200):  # bisection to float precision
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if t_within(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over n pairs and its two-sided t interval (nan bounds when n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int
    confidence: float = CONFIDENCE

    @property
    def shown(self) -> bool:
        """The interval excludes zero."""
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)

    def verdict(self, higher: str = "higher", lower: str = "lower") -> str:
        if self.n < 2:
            return "not tested (fewer than 2 pairs)"
        if self.lo > 0:
            return higher
        if self.hi < 0:
            return lower
        return "no difference shown"

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.2f} (n={self.n})"
        return f"{self.mean:+.2f} [{self.lo:+.2f}, {self.hi:+.2f}]"


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> PairedDifference:
    """Mean of ``a[k] - b[k]`` and its Student-t ``confidence`` interval over the pairs k."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    if not a:
        raise ValueError("no pairs")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n, mean = len(d), statistics.fmean(d)
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, n, confidence)
    half = t_quantile(confidence, n - 1) * statistics.stdev(d) / math.sqrt(n)
    return PairedDifference(mean, mean - half, mean + half, n, confidence)


def paired_by_seed(
    a: dict[int, float], b: dict[int, float], confidence: float = CONFIDENCE
) -> PairedDifference | None:
    """:func:`paired_difference` over the seeds both ``a`` and ``b`` (seed -> value) have;
    None when they share no seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return paired_difference([a[k] for k in seeds], [b[k] for k in seeds], confidence)
