"""Logit standardisation (``standardize_logits``): golden values and invariance to per-sample
scale and shift."""

from __future__ import annotations

import math

import pytest
import torch

from ckd.losses import standardize_logits

# --------------------------------------------------------------------------- standardisation


def test_standardize_logits_golden_values():
    z = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 8.0], [5.0, 5.0, 5.0]])
    a = math.sqrt(1.5)  # [1, 2, 3]: mean 2, population std sqrt(2/3)
    expected = torch.tensor(
        [[-a, 0.0, a], [-1 / math.sqrt(2), -1 / math.sqrt(2), math.sqrt(2)], [0.0, 0.0, 0.0]]
    )
    torch.testing.assert_close(standardize_logits(z), expected, rtol=1e-5, atol=1e-5)
    assert standardize_logits(z.half()).dtype == torch.float32
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        standardize_logits(torch.zeros(3))


def test_standardize_logits_is_invariant_to_per_sample_scale_and_shift():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 100, generator=g) * 3
    scale = torch.rand(6, 1, generator=g) * 10 + 0.1
    shift = torch.randn(6, 1, generator=g) * 50
    out = standardize_logits(z)
    torch.testing.assert_close(standardize_logits(z * scale + shift), out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.mean(1), torch.zeros(6), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.pow(2).mean(1), torch.ones(6), rtol=1e-4, atol=1e-4)
