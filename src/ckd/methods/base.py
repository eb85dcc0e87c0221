"""The method contract and the distiller that runs methods.

A **method** is a pure loss function (in :mod:`ckd.losses` or in its own file) plus a thin
:class:`Method` module that turns one training batch into a dict of named, already weighted loss
terms. A method may own learnable parts (regressors, embeddings, memory banks): they are then
trained, checkpointed and counted like any module.

The **distiller** owns the student and the frozen teacher (eval mode, no gradient, never in the
optimizer), runs them once per batch, and sums the terms of its methods. The trainer only sees
the distiller; it never knows which method runs. Several methods may run together (e.g. a
feature loss plus a logit loss): their terms are summed, and a term name given by several
methods (``ce`` typically) is taken from the first one only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ckd.losses._checks import wide
from ckd.models.features import INPUT_SUFFIX, FeatureExtractor, feature_names
from ckd.registry import Registry


@dataclasses.dataclass
class Options:
    """The options of a method (classification or detection): fields plus their checks."""

    def validate(self) -> None:
        """Raise ValueError naming a bad value. Subclasses extend this."""

    def require(self, ok: bool, field: str, allowed: str) -> None:
        """Raise ``ValueError("method.<field> must be <allowed>; got <value>")`` unless ``ok``."""
        if not ok:
            raise ValueError(f"method.{field} must be {allowed}; got {getattr(self, field)!r}")


@dataclasses.dataclass
class MethodOptions(Options):
    """Options common to every method; each method subclasses this with its own fields."""

    w_ce: float = 1.0  # weight of the cross-entropy on the labels

    def validate(self) -> None:
        self.require(self.w_ce >= 0, "w_ce", ">= 0")


@dataclasses.dataclass(frozen=True)
class Outputs:
    """What one network gives for a batch: logits ``[B, K]``, and when features were asked for,
    its stage feature maps (shallow to deep, each ``[B, C_i, H_i, W_i]``) and pooled embedding
    ``[B, D]``."""

    logits: torch.Tensor
    feats: tuple[torch.Tensor, ...] = ()
    embedding: torch.Tensor | None = None
    # when pre-activations were asked for: the stage maps before their ReLU (aligned with
    # ``feats``; a model that does not name them in ``preact_names`` gives ``feats`` again)
    preact: tuple[torch.Tensor, ...] = ()


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Feature geometry of a network (without the batch dimension), for sizing method modules."""

    feats: tuple[tuple[int, ...], ...]
    embedding: int
    num_classes: int


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a method may know when it is built."""

    num_classes: int
    num_train: int  # size of the training set (e.g. for a memory bank over all samples)
    student: Shapes | None = None  # set when the method needs features
    teacher: Shapes | None = None


class Batch:
    """One training batch as every method sees it.

    ``student`` holds the student's :class:`Outputs` (with gradient); ``teacher`` the teacher's,
    computed on first access (once per batch, whatever the number of methods) without gradient.
    ``epoch`` (0-based), ``step`` (global optimisation step) and ``index`` (``[B]`` dataset
    indices of the samples) come from the trainer, the same for every method. ``gather(x)``
    concatenates a ``[B, ...]`` tensor of every process of a distributed run in rank order
    (``[world * B, ...]``, gradients flowing back to each process's own slice); in a single
    process it returns ``x``.

    ``teacher`` may bring the teacher's outputs from elsewhere (e.g. a cache of them): an
    :class:`Outputs`, or a function returning one, called on first access instead of running the
    teacher. They must be ordinary tensors (not inference-mode ones), as losses save them for
    backward; when a method reads features they must hold the features.
    """

    def __init__(
        self,
        distiller: Distiller,
        images: torch.Tensor,
        targets: torch.Tensor,
        student: Outputs,
        epoch: int = 0,
        step: int = 0,
        index: torch.Tensor | None = None,
        teacher: TeacherSource = None,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.images, self.targets, self.student = images, targets, student
        self.epoch, self.step, self.index = epoch, step, index
        self.gather = gather or _same
        self._distiller = distiller
        self._teacher: Outputs | None = None
        self._given_teacher = teacher

    @property
    def teacher(self) -> Outputs:
        if self._teacher is None:
            given = self._given_teacher
            if given is None:
                self._teacher = self._distiller.teacher_outputs(self.images)
            else:
                out = given if isinstance(given, Outputs) else given()
                d = self._distiller
                if (d.needs_features and not out.feats) or (d.needs_preact and not out.preact):
                    # the given outputs lack what a method reads: run the teacher after all
                    out = d.teacher_outputs(self.images)
                self._teacher = out
        return self._teacher


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


class Method(nn.Module):
    """A distillation method: ``forward(batch) -> {term name: weighted scalar}``.

    Subclasses set :attr:`Options`, :attr:`description`, :attr:`paper`, and
    :attr:`needs_teacher` / :attr:`needs_features` when they differ from the defaults.
    """

    Options: ClassVar[type[MethodOptions]] = MethodOptions
    needs_teacher: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False
    needs_preact: ClassVar[bool] = False  # also the pre-ReLU stage maps (implies features)
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""

    def __init__(self, options: MethodOptions, setup: Setup) -> None:
        super().__init__()
        self.options = options
        self.setup = setup

    def attach(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Called once by the distiller with its networks (teacher weights already loaded),
        for what a method derives from them, e.g. statistics of the teacher's BN layers. The
        networks are not to be kept: the distiller owns them."""

    def forward(self, b: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def ce(self, b: Batch) -> torch.Tensor:
        """The weighted label cross-entropy term, in float32 (float64 for float64 logits)."""
        return self.options.w_ce * F.cross_entropy(wide(b.student.logits), b.targets)


METHODS: Registry[type[Method]] = Registry("method")


def linear_warmup(epoch: int, epochs: int) -> float:
    """``min((epoch + 1) / epochs, 1)`` for the 0-based ``epoch``; 1 when ``epochs`` is 0."""
    return 1.0 if epochs == 0 else min((epoch + 1) / epochs, 1.0)


#: Teacher outputs given to a batch instead of running the teacher: the outputs, a function
#: returning them (called at most once, on first access), or None (run the teacher, lazily).
TeacherSource = Outputs | Callable[[], Outputs] | None


def run_network(
    model: nn.Module, images: torch.Tensor, features: bool, preact: bool = False
) -> Outputs:
    """Forward ``model``; with ``features``, also read its stages and embedding by hooks, and
    with ``preact`` the stage maps before their ReLU (the model's ``preact_names``)."""
    if not (features or preact):
        return Outputs(model(images))
    stages, classifier = feature_names(model, images)
    embed = f"{classifier}{INPUT_SUFFIX}"
    pre = preact_names(model) if preact else None
    with FeatureExtractor(model, [*stages, embed, *(pre or ())]) as fx:
        logits = model(images)
    feats = tuple(fx.features[n] for n in stages)
    pre_maps = tuple(fx.features[n] for n in pre) if pre else (feats if preact else ())
    return Outputs(logits, feats, fx.features[embed], pre_maps)


def preact_names(model: nn.Module) -> tuple[str, ...] | None:
    """The hook names of ``model``'s pre-activation stage maps (aligned with its
    ``stage_names``), or None when it names none (torchvision, timm models)."""
    names = getattr(model, "preact_names", None)
    stages = getattr(model, "stage_names", None)
    if not names or not stages or len(names) != len(stages):
        return None
    return tuple(names)


def aligned_stages(setup: Setup, method: str) -> tuple[list[int], list[int]]:
    """Indices of the student's and teacher's stage features a feature method pairs: those
    after the stem, the deepest ``min(n_s, n_t) - 1`` of each (aligned from the deepest when the
    two networks have different numbers of stages)."""
    if setup.student is None or setup.teacher is None:
        raise ValueError(f"{method} needs the student's and teacher's feature shapes in its Setup")
    n_s, n_t = len(setup.student.feats), len(setup.teacher.feats)
    n = min(n_s, n_t) - 1
    if n < 1:
        raise ValueError(f"{method} needs at least two stage features per network")
    return list(range(n_s - n, n_s)), list(range(n_t - n, n_t))


def network_shapes(model: nn.Module, num_classes: int, sample: torch.Tensor) -> Shapes:
    """Feature shapes of ``model`` on ``sample`` ``[1+, C, H, W]`` (eval mode, no gradient)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = run_network(model, sample, features=True)
    model.train(was_training)
    return Shapes(
        tuple(tuple(f.shape[1:]) for f in out.feats), int(out.embedding.shape[1]), num_classes
    )


class Distiller(nn.Module):
    """Student (trained) + frozen teacher + one or more methods whose terms are summed."""

    def __init__(
        self, student: nn.Module, teacher: nn.Module | None, methods: list[Method]
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
        self.needs_preact = any(m.needs_preact for m in methods)
        self.needs_features = self.needs_preact or any(m.needs_features for m in methods)
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        for method in methods:
            method.attach(student, teacher)

    def train(self, mode: bool = True) -> Distiller:
        """Train/eval the student and methods; the teacher always stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_outputs(self, images: torch.Tensor) -> Outputs:
        """The teacher's outputs for a batch, without gradient, in eval mode."""
        if self.teacher is None:
            raise RuntimeError("this distiller has no teacher")
        return run_network(self.teacher, images, self.needs_features, self.needs_preact)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Inference: the student's logits ``[B, K]``."""
        return self.student(images)

    def forward_train(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        teacher: TeacherSource = None,
        **ctx: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training batch -> (student logits ``[B, K]``, {term name: weighted scalar}).

        ``ctx`` (``epoch``, ``step``, ``index``, ``gather``) is passed on to every method in the
        :class:`Batch`; ``teacher`` (precomputed teacher outputs, see :class:`Batch`) too.
        """
        student = run_network(self.student, images, self.needs_features, self.needs_preact)
        batch = Batch(self, images, targets, student, teacher=teacher, **ctx)
        terms: dict[str, torch.Tensor] = {}
        for method in self.methods:
            for name, value in method(batch).items():
                terms.setdefault(name, value)
        return student.logits, terms

    # ----- parameters and state -----
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The student's parameters and those of the methods' modules, never the teacher's."""
        for name, p in self.named_parameters():
            if not name.startswith("teacher."):
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
