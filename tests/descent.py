"""A first-order check that a loss term's gradient is the term's gradient, with a verdict that
does not hang on a CPU's floating point.

"Loss after a few SGD steps < loss before" depends on the step size against the curvature and,
near the edge, on the last bits of every float32 reduction: one CPU passes, another fails (PKT
on ShuffleV2 rose on an AVX-512 machine; its float32 value jitters by ~0.3% under perturbations
of the last bit). Instead the network and the losses run in float64 (the losses compute in
float64 for float64 inputs), and the change of the term between two tiny steps ``-h g`` and
``+h g`` along its own gradient ``g`` (a central difference: the curvature cancels) must be the
first-order prediction ``2 h |g|^2`` to within 1%. ``h`` is sized so that the change is 2e-7
of the term: far above float64 rounding (~1e-16 of the values summed, ~1e-12 after PKT's
cancellation), and small enough that ReLU kinks crossed by the step move the ratio by < 2e-4
(measured on the methods' tests). A gradient that misses a path (a feature detached where it
should flow, a tapped tensor overwritten in place) or belongs to another function fails;
rounding cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def descent_ratio(
    term: Callable[[], torch.Tensor],
    params: Sequence[torch.nn.Parameter],
    fraction: float = 1e-7,
) -> float:
    """Measured / predicted change of ``term()`` between ``params - h g`` and ``params + h g``,
    ``g`` its gradient and ``h`` such that the predicted change ``2 h |g|^2`` is ``2 fraction``
    of the term's value.

    ``term`` recomputes the float64 scalar from the current parameters (deterministically: seed
    any random draws inside it); the parameters are restored afterwards.
    """
    value = term()
    assert value.dtype == torch.float64, "run the check in float64 (model.double())"
    grads = torch.autograd.grad(value, params, allow_unused=True)
    pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
    squared = sum(float(g.pow(2).sum()) for _, g in pairs)
    assert squared > 0, "the term has no gradient"
    h = fraction * abs(value.item()) / squared
    saved = [p.detach().clone() for p, _ in pairs]
    values = []
    with torch.no_grad():
        for sign in (-1.0, 1.0):
            for (p, g), old in zip(pairs, saved, strict=True):
                p.copy_(old + sign * h * g)
            values.append(term().item())
        for (p, _), old in zip(pairs, saved, strict=True):
            p.copy_(old)
    return (values[1] - values[0]) / (2 * h * squared)


def assert_descends(
    term: Callable[[], torch.Tensor], params: Sequence[torch.nn.Parameter], what: object = ""
) -> None:
    """The term falls along its negative gradient at the rate the gradient predicts (1%)."""
    ratio = descent_ratio(term, params)
    assert abs(ratio - 1) < 1e-2, (what, ratio)
