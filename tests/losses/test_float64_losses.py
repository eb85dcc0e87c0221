"""Float64 inputs are computed in float64 (float32, bf16 and fp16 ones in float32), so every loss
passes ``torch.autograd.gradcheck``: its backward is the derivative of its forward."""

from __future__ import annotations

import pytest
import torch

from ckd.losses import (
    at_loss,
    ckd_loss,
    crd_loss,
    dkd_loss,
    fitnet_loss,
    hcl_loss,
    kd_loss,
    kdsvd_loss,
    nst_loss,
    ofd_loss,
    pkt_loss,
    rkd_loss,
    sp_loss,
    standardize_logits,
    vid_loss,
)


def r(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()


S_LOG, T_LOG, Y = r(5, 7, seed=0), r(5, 7, seed=1).detach(), torch.tensor([0, 3, 6, 1, 2])
S_MAP, T_MAP = r(3, 4, 4, 4, seed=2), r(3, 4, 4, 4, seed=3).detach()
S_EMB, T_EMB = r(5, 6, seed=4), r(5, 6, seed=5).detach()
BANK = torch.nn.functional.normalize(r(9, 6, seed=6).detach(), dim=1)
ROWS = torch.tensor([[i, (i + 1) % 9, (i + 4) % 9] for i in range(5)])

LOSSES = {
    "ckd": (lambda s: ckd_loss(s, T_LOG), S_LOG),
    "ckd_student": (lambda s: ckd_loss(s, T_LOG, 2.0, "student"), S_LOG),
    "kd": (lambda s: kd_loss(s, T_LOG, 4.0), S_LOG),
    "dkd": (lambda s: dkd_loss(s, T_LOG, Y, 1.0, 8.0, 4.0), S_LOG),
    "ckd_standardized": (lambda s: ckd_loss(standardize_logits(s), T_LOG), S_LOG),
    "fitnet": (lambda s: fitnet_loss(s, T_MAP), S_MAP),
    "at": (lambda s: at_loss([s], [T_MAP]), S_MAP),
    "nst": (lambda s: nst_loss([s], [T_MAP]), S_MAP),
    "sp": (lambda s: sp_loss(s, T_MAP), S_MAP),
    "kdsvd": (lambda s: kdsvd_loss([s, s * 0.5 + 0.1], [T_MAP, T_MAP.flip(0)]), S_MAP),
    "pkt": (lambda s: pkt_loss(s, T_EMB), S_EMB),
    "rkd": (lambda s: rkd_loss(s, T_EMB), S_EMB),
    "ofd": (lambda s: ofd_loss([s], [T_MAP], [torch.full((4,), -0.2)]), S_MAP),
    "hcl": (lambda s: hcl_loss([s], [T_MAP]), S_MAP),
    "vid": (lambda s: vid_loss(s, T_MAP, torch.zeros(4, dtype=torch.float64)), S_MAP),
    "crd": (
        lambda s: crd_loss(
            torch.nn.functional.normalize(s, dim=1),
            torch.nn.functional.normalize(T_EMB, dim=1),
            BANK,
            BANK.flip(0),
            ROWS,
            torch.tensor([3.0, 2.0], dtype=torch.float64),
            0.5,
        ),
        S_EMB,
    ),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_float64_in_float64_out_and_gradcheck(name):
    fn, x = LOSSES[name]
    value = fn(x)
    assert value.dtype == torch.float64 and value.dim() == 0
    # (undefined incoming gradients are no case for a scalar loss: KDSVD's hook expects one)
    assert torch.autograd.gradcheck(
        fn, (x,), eps=1e-6, atol=1e-6, rtol=1e-4, check_undefined_grad=False
    )
