"""The method contract, for every task.

A **method** is a pure loss function (in :mod:`ckd.losses`) plus a thin :class:`Method` module
that turns one training :class:`Batch` into a dict of named, already weighted distillation
terms. A method may own learnable parts (regressors, embeddings, memory banks): they are then
trained, checkpointed and counted like any module.

A method never sees images, detections or a task: it reads the **views** a task gives of a
batch (:mod:`ckd.methods.views`), :class:`Outputs` of the student and of the teacher (logits
``[B, K]``, one row per sample; stage feature maps; a pooled embedding) and ``targets``
(``[B]``, the class of each row). For classification a row is an image; for detection it is a
region of interest sampled for the student's box head. So ``ckd``, ``kd`` and ``dkd`` are one
file each and serve both tasks; ``Method.tasks`` says which tasks a method serves. The
:class:`~ckd.methods.distiller.Distiller` runs the methods of a run around its networks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from ckd.errors import show
from ckd.registry import Registry


@dataclasses.dataclass
class MethodOptions:
    """Options common to every method; each method subclasses this with its own fields.

    ``TASK_DEFAULTS`` maps a task name to the defaults that differ there from the field
    defaults (which are the classification recipe's), e.g. CKD's weight on detection RoIs.
    """

    TASK_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    # weight of the task's own loss: the label cross-entropy (classification) or the
    # detector's losses (detection); the first method of a combination sets it
    w_ce: float = 1.0

    def validate(self) -> None:
        """Raise ValueError naming a bad value. Subclasses extend this (calling it first).

        Here: every loss weight (a field named ``w_*`` or ``*_weight``) must be >= 0, which
        the schema has already made a finite number."""
        for f in dataclasses.fields(self):
            if f.name.startswith("w_") or f.name.endswith("_weight"):
                self.require(getattr(self, f.name) >= 0, f.name, ">= 0")

    def require(self, ok: bool, field: str, allowed: str) -> None:
        """Raise ``ValueError("method.<field> must be <allowed>; got <value>")`` unless ``ok``."""
        if not ok:
            raise ValueError(f"method.{field} must be {allowed}; got {show(getattr(self, field))}")


@dataclasses.dataclass(frozen=True)
class Outputs:
    """What one network gives for a batch: logits ``[B, K]``, and when features were asked for,
    its stage feature maps (shallow to deep, each ``[B, C_i, H_i, W_i]``) and pooled embedding
    ``[B, D]`` (None where the network has none, e.g. a detector's FPN levels)."""

    logits: torch.Tensor
    feats: tuple[torch.Tensor, ...] = ()
    embedding: torch.Tensor | None = None
    # when pre-activations were asked for: the stage maps before their ReLU (aligned with
    # ``feats``; a model that does not name them in ``preact_names`` gives ``feats`` again)
    preact: tuple[torch.Tensor, ...] = ()


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Feature geometry of a network (without the batch dimension), for sizing method modules.
    ``stem``: whether ``feats[0]`` is a stem map that stage-pairing methods skip."""

    feats: tuple[tuple[int, ...], ...]
    embedding: int | None
    num_classes: int
    stem: bool = True


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a method may know when it is built."""

    num_classes: int  # classes of a logit row (a detector's include the background)
    num_train: int  # size of the training set (e.g. for a memory bank over all samples)
    student: Shapes | None = None  # set when the method needs features
    teacher: Shapes | None = None


@dataclasses.dataclass(frozen=True)
class Needs:
    """What the methods of a distiller read beyond the logits."""

    features: bool = False
    preact: bool = False


class Batch:
    """One training batch as every method sees it.

    ``student`` holds the student's :class:`Outputs` (with gradient), ``targets`` the class of
    each logit row; ``teacher`` the teacher's outputs, computed on first access (once per batch,
    whatever the number of methods) without gradient. ``epoch`` (0-based), ``step`` (0-based
    global optimisation step) and ``index`` (``[B]`` dataset indices of the samples, where rows
    are samples) come from the trainer. ``gather(x)`` concatenates a ``[B, ...]`` tensor of every
    process of a distributed run in rank order (gradients flowing back to each process's own
    slice); in a single process it returns ``x``.

    When the step is a captured CUDA graph (``run.cuda_graphs``, :mod:`ckd.engine.graphs`),
    ``epoch`` and ``step`` are 0-dim float tensors on the device, which the graph reads at each
    replay, and ``index`` is on the device: compute with them (as :meth:`warmup` does), never
    branch on them in Python.
    """

    def __init__(
        self,
        student: Outputs,
        targets: torch.Tensor,
        teacher: Callable[[], Outputs],
        epoch: int | torch.Tensor = 0,
        step: int | torch.Tensor = 0,
        index: torch.Tensor | None = None,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.student, self.targets = student, targets
        self.epoch, self.step, self.index = epoch, step, index
        self.gather = gather or _same
        self._run_teacher = teacher
        self._teacher: Outputs | None = None

    @property
    def teacher(self) -> Outputs:
        if self._teacher is None:
            self._teacher = self._run_teacher()
        return self._teacher

    def warmup(self, epochs: int = 0, iters: int = 0) -> float | torch.Tensor:
        """A linear warm-up factor: ``min((step + 1) / iters, 1)`` when ``iters``, else
        ``min((epoch + 1) / epochs, 1)`` when ``epochs`` (the released DKD's 1-based
        ``epoch / warmup``), else 1 (a device tensor when ``epoch`` and ``step`` are)."""
        if iters > 0:
            return _at_most_one((self.step + 1) / iters)
        return 1.0 if epochs <= 0 else _at_most_one((self.epoch + 1) / epochs)


def _at_most_one(x: float | torch.Tensor) -> float | torch.Tensor:
    return x.clamp(max=1.0) if isinstance(x, torch.Tensor) else min(x, 1.0)


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


#: A method's options class (each method reads its own fields: ``class KD(Method[KDOptions])``).
OptionsT = TypeVar("OptionsT", bound=MethodOptions, covariant=True)


class Method(nn.Module, Generic[OptionsT]):
    """A distillation method: ``forward(batch) -> {term name: weighted scalar}``.

    Subclasses name their options class as the type argument (``Method[KDOptions]``) and set
    :attr:`Options`, :attr:`description`, :attr:`paper`, and
    :attr:`needs_teacher` / :attr:`needs_features` / :attr:`embedding_only` / :attr:`tasks` when
    they differ from the defaults.
    """

    Options: ClassVar[type[MethodOptions]] = MethodOptions
    needs_teacher: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False
    # a feature method that reads only the pooled embedding [B, D], not the convolutional stage
    # maps [B, C, H, W] (so it also serves vision transformers, which have no such maps)
    embedding_only: ClassVar[bool] = False
    needs_preact: ClassVar[bool] = False  # also the pre-ReLU stage maps (implies features)
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    #: Why the method's step cannot be captured as a CUDA graph (it reads a device value on the
    #: host, or its shapes depend on the data); empty: it can (``run.cuda_graphs``).
    graph_unsafe: ClassVar[str] = ""

    def __init__(self, options: OptionsT, setup: Setup) -> None:
        super().__init__()
        self.options: OptionsT = options
        self.setup = setup

    def attach(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Called once by the distiller with its networks (teacher weights already loaded),
        for what a method derives from them, e.g. statistics of the teacher's BN layers. The
        networks are not to be kept: the distiller owns them."""

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError


METHODS: Registry[type[Method[MethodOptions]]] = Registry("method")


def aligned_stages(setup: Setup, method: str) -> tuple[list[int], list[int]]:
    """Indices of the student's and teacher's stage features a feature method pairs: the
    deepest ``min(n_s, n_t)`` of each, less the stem when the networks have one (aligned from
    the deepest when the two networks have different numbers of stages)."""
    if setup.student is None or setup.teacher is None:
        raise ValueError(f"{method} needs the student's and teacher's feature shapes in its Setup")
    n_s, n_t = len(setup.student.feats), len(setup.teacher.feats)
    n = min(n_s, n_t) - (1 if setup.student.stem or setup.teacher.stem else 0)
    if n < 1:
        raise ValueError(f"{method} needs at least two stage features per network")
    return list(range(n_s - n, n_s)), list(range(n_t - n, n_t))
