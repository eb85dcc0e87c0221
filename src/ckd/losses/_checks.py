"""Shared argument checks of the logit losses: one clear line per bad value."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

import torch


def check_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Both logits must be ``[B, C]`` with the same shape."""
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits must be [B, C]; got shape {tuple(student_logits.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape; got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")


def wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the losses' precision: float32 (bf16 / fp16 promoted), or float64 left as it is,
    so that float64 inputs are computed in float64 (``torch.autograd.gradcheck``, first-order
    checks below float32's rounding)."""
    return x if x.dtype == torch.float64 else x.float()


def as_float32(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student logits in the losses' precision (gradient kept), the teacher's in the same and
    detached: float32, or float64 when either is float64 (see :func:`wide`)."""
    wider = torch.float64 in (student_logits.dtype, teacher_logits.dtype)
    dtype = torch.float64 if wider else torch.float32
    return student_logits.to(dtype), teacher_logits.detach().to(dtype)


def full_precision(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """A context in which autocast is off, so float32 inputs are computed in float32."""
    try:
        return torch.autocast(device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to switch off
        return contextlib.nullcontext()


P = ParamSpec("P")
R = TypeVar("R")


def in_full_precision(
    fn: Callable[Concatenate[torch.Tensor, P], R],
) -> Callable[Concatenate[torch.Tensor, P], R]:
    """Decorator: run a loss whose first argument is a tensor with autocast switched off."""

    @functools.wraps(fn)
    def wrapper(first: torch.Tensor, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with full_precision(first.device):
            return fn(first, *args, **kwargs)

    return wrapper
