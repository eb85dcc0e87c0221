"""The distiller: a run's student, its frozen teacher and its methods, run through the task's
view.

The distiller owns the student and the frozen teacher (eval mode, no gradient, never in the
optimizer). Its :class:`~ckd.methods.views.View` (the task's) runs the student, giving its
outputs and the task's own loss terms (the label cross-entropy; a detector's losses), which the
distiller weights by the first method's ``w_ce``; the teacher runs at most once per batch, on
first access. The trainer only sees the distiller; it never knows which method or task runs.
Several methods may run together (a feature loss plus a logit loss): their terms are summed, and
a term name given by several methods is taken from the first one. :func:`build_distiller` is the
one way every task builds it from the configured methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, cast

import torch
from torch import nn

from ckd.methods.base import METHODS, Batch, Method, MethodOptions, Needs, Outputs, Setup, Shapes
from ckd.methods.views import ClassifierView, View

#: Teacher outputs given to a batch instead of running the teacher: the outputs, a function
#: returning them (called at most once, on first access), or None (run the teacher, lazily).
#: They must hold what the methods read (features, pre-activations) and be ordinary tensors.
TeacherSource = Outputs | Callable[[], Outputs] | None


class Distiller(nn.Module):
    """Student (trained) + frozen teacher + one or more methods whose terms are summed, run
    through the task's :class:`View` (classification's by default)."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        methods: list[Method[MethodOptions]],
        view: View | None = None,
    ) -> None:
        super().__init__()
        if not methods:
            raise ValueError("a distiller needs at least one method")
        needing = [type(m).__name__ for m in methods if m.needs_teacher]
        if needing and teacher is None:
            raise ValueError(f"method {needing[0]} needs a teacher")
        self.student = student
        self.teacher = teacher
        self.methods = nn.ModuleList(methods)
        self.view: View = view if view is not None else ClassifierView()
        preact = any(m.needs_preact for m in methods)
        self.needs = Needs(features=preact or any(m.needs_features for m in methods), preact=preact)
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        for method in methods:
            method.attach(student, teacher)

    @property
    def needs_features(self) -> bool:
        return self.needs.features

    def train(self, mode: bool = True) -> Distiller:
        """Train/eval the student and methods; the teacher always stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_outputs(self, inputs: Any, context: Any = None) -> Outputs:
        """The teacher's outputs for a batch, without gradient, in eval mode (``context``: what
        the view's student pass left for it, e.g. a detector's sampled RoIs)."""
        if self.teacher is None:
            raise RuntimeError("this distiller has no teacher")
        return self.view.teacher(self.teacher, inputs, context, self.needs)

    def forward(self, inputs: Any) -> Any:
        """Inference: the student's output (a classifier's logits ``[B, K]``)."""
        return self.student(inputs)

    def forward_train(
        self,
        inputs: Any,
        targets: Any,
        teacher: TeacherSource = None,
        epoch: int | torch.Tensor = 0,
        step: int | torch.Tensor = 0,
        index: torch.Tensor | None = None,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training batch -> (student logits ``[B, K]``, {term name: weighted scalar}).

        ``epoch``, ``step``, ``index`` and ``gather`` are passed on to every method in the
        :class:`Batch`; ``teacher`` gives the teacher's outputs instead of running it (e.g. from
        a cache; see :data:`TeacherSource`). ``inputs`` and ``targets`` are the task's (what its
        :class:`View` reads).
        """
        out, rows, own, context = self.view.student(self.student, inputs, targets, self.needs)
        w_ce = cast(Method[MethodOptions], self.methods[0]).options.w_ce
        terms = {name: w_ce * value for name, value in own.items()}

        def run_teacher() -> Outputs:
            if teacher is None:
                return self.teacher_outputs(inputs, context)
            return teacher if isinstance(teacher, Outputs) else teacher()

        batch = Batch(out, rows, run_teacher, epoch, step, index, gather)
        for method in self.methods:
            for name, value in method(batch).items():
                terms.setdefault(name, value)
        return out.logits, terms

    # ----- parameters and state -----
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The student's and the methods' parameters that train (never the teacher's)."""
        for name, p in self.named_parameters():
            if not name.startswith("teacher.") and p.requires_grad:
                yield p

    def extra_parameters(self) -> int:
        """Number of trainable parameters the methods add beyond the student."""
        return sum(p.numel() for p in self.methods.parameters())

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the student and the methods (the teacher is not saved)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not fit this method/student: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )


class MethodPart(Protocol):
    """One configured method (``ckd.config.MethodConfig`` is one): its name and options."""

    name: str
    options: MethodOptions


def build_distiller(
    parts: Sequence[MethodPart],
    student: nn.Module,
    teacher: nn.Module | None,
    num_classes: int,
    num_train: int,
    shapes: Callable[[nn.Module], Shapes],
    view: View | None = None,
    check: Callable[[dict[str, Shapes | None]], None] | None = None,
) -> Distiller:
    """The methods ``parts`` around ``student`` and the (frozen) ``teacher``, run through
    ``view`` (classification's by default).

    Methods that read features are told the student's and teacher's feature shapes
    (``shapes(network)``, measured once) so they can size their own modules; ``check`` sees
    those shapes first (``{"student": ..., "teacher": ...}``) and may refuse them.
    """
    classes = [METHODS.get(p.name) for p in parts]
    found: dict[str, Shapes | None] = {"student": None, "teacher": None}
    if any(c.needs_features or c.needs_preact for c in classes):
        found["student"] = shapes(student)
        if teacher is not None:
            found["teacher"] = shapes(teacher)
        if check is not None:
            check(found)
    setup = Setup(num_classes, num_train, found["student"], found["teacher"])
    methods = [cls(p.options, setup) for cls, p in zip(classes, parts, strict=True)]
    return Distiller(student, teacher, methods, view=view)
