"""Shared argument checks of the logit losses: one clear line per bad value."""

from __future__ import annotations

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


def as_float32(student_logits: torch.Tensor, teacher_logits: torch.Tensor):
    """Student logits cast to float32 (gradient kept); teacher's cast and detached."""
    return student_logits.float(), teacher_logits.detach().float()
