"""The distiller contract every method follows.

A method is a pure loss function (in :mod:`ckd.losses`) plus a thin :class:`Distiller` that owns
the student and a frozen teacher and turns one batch into the student's logits and a dict of
named, already weighted loss terms. The trainer sums the dict; it never knows which method runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ckd.registry import Registry


@dataclasses.dataclass
class MethodOptions:
    """Options common to every method; each method subclasses this with its own fields."""

    w_ce: float = 1.0  # weight of the cross-entropy on the labels

    def validate(self) -> None:
        """Raise ValueError naming a bad value. Subclasses extend this."""
        if self.w_ce < 0:
            raise ValueError(f"method.w_ce must be >= 0; got {self.w_ce}")


class Distiller(nn.Module):
    """Owns ``student`` (trained) and ``teacher`` (frozen: eval mode, no gradient, not trained).

    Subclasses set :attr:`Options`, :attr:`description`, :attr:`paper` and implement
    :meth:`losses`. Modules a method adds (regressors, embeddings, ...) are registered as
    attributes and are then trained, checkpointed and counted by :meth:`extra_parameters`.

    ``forward_train(images, targets, **ctx)`` receives from the trainer, for every method alike:
    ``epoch`` (int, 0-based), ``step`` (int, global optimisation step) and ``index`` (``[B]``
    int64 dataset indices of the samples).
    """

    Options: ClassVar[type[MethodOptions]] = MethodOptions
    needs_teacher: ClassVar[bool] = True
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""

    def __init__(
        self, student: nn.Module, teacher: nn.Module | None, options: MethodOptions
    ) -> None:
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ValueError(f"method {type(self).__name__} needs a teacher")
        self.student = student
        self.teacher = teacher
        self.options = options
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    # ----- the teacher stays frozen whatever the trainer does -----
    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` teacher logits, no gradient, teacher in eval mode."""
        assert self.teacher is not None
        return self.teacher(images)

    # ----- what the trainer calls -----
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Inference: the student's logits ``[B, C]``."""
        return self.student(images)

    def forward_train(
        self, images: torch.Tensor, targets: torch.Tensor, **ctx: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training batch -> (student logits ``[B, C]``, {term name: weighted scalar})."""
        logits = self.student(images)
        return logits, self.losses(logits, images, targets, **ctx)

    def losses(
        self, logits: torch.Tensor, images: torch.Tensor, targets: torch.Tensor, **ctx: Any
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def ce(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The weighted label cross-entropy term, in float32."""
        return self.options.w_ce * F.cross_entropy(logits.float(), targets)

    # ----- parameters and state -----
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The student's parameters and those of the method's own modules, never the teacher's."""
        for name, p in self.named_parameters():
            if not name.startswith("teacher."):
                yield p

    def extra_parameters(self) -> int:
        """Number of trainable parameters the method adds beyond the student."""
        return sum(
            p.numel()
            for name, p in self.named_parameters()
            if not name.startswith(("teacher.", "student."))
        )

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the student and the method's modules (the teacher is not saved)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not fit this method/student: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )


METHODS: Registry[type[Distiller]] = Registry("method")
