"""The method contract and the distiller that runs methods, for every task.

A **method** is a pure loss function (in :mod:`ckd.losses`) plus a thin :class:`Method` module
that turns one training :class:`Batch` into a dict of named, already weighted distillation
terms. A method may own learnable parts (regressors, embeddings, memory banks): they are then
trained, checkpointed and counted like any module.

A method never sees images, detections or a task: it reads the **views** a task gives of a
batch, :class:`Outputs` of the student and of the teacher (logits ``[B, K]``, one row per
sample; stage feature maps; a pooled embedding) and ``targets`` (``[B]``, the class of each
row). For classification a row is an image; for detection it is a region of interest sampled
for the student's box head (:mod:`ckd.detection.view`). So ``ckd``, ``kd`` and ``dkd`` are one
file each and serve both tasks; ``Method.tasks`` says which tasks a method serves.

The **distiller** owns the student and the frozen teacher (eval mode, no gradient, never in the
optimizer). Its :class:`View` (the task's) runs the student, giving its outputs and the task's
own loss terms (the label cross-entropy; a detector's losses), which the distiller weights by
the first method's ``w_ce``; the teacher runs at most once per batch, on first access. The
trainer only sees the distiller; it never knows which method or task runs. Several methods may
run together (a feature loss plus a logit loss): their terms are summed, and a term name given
by several methods is taken from the first one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ckd.errors import show
from ckd.losses._checks import wide
from ckd.models.features import INPUT_SUFFIX, FeatureExtractor, feature_names
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


#: Teacher outputs given to a batch instead of running the teacher: the outputs, a function
#: returning them (called at most once, on first access), or None (run the teacher, lazily).
#: They must hold what the methods read (features, pre-activations) and be ordinary tensors.
TeacherSource = Outputs | Callable[[], Outputs] | None


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
        epoch: int = 0,
        step: int = 0,
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


def _at_most_one(x: Any) -> Any:
    return x.clamp(max=1.0) if isinstance(x, torch.Tensor) else min(x, 1.0)


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


class Method(nn.Module):
    """A distillation method: ``forward(batch) -> {term name: weighted scalar}``.

    Subclasses set :attr:`Options`, :attr:`description`, :attr:`paper`, and
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


METHODS: Registry[type[Method]] = Registry("method")


class View(Protocol):
    """How a task runs its networks on a batch and shows the result to the methods."""

    def student(
        self, net: nn.Module, inputs: Any, targets: Any, needs: Needs
    ) -> tuple[Outputs, torch.Tensor, dict[str, torch.Tensor], Any]:
        """``(outputs, targets of the logit rows, the task's own loss terms (unweighted),
        context for the teacher)``."""
        ...

    def teacher(self, net: nn.Module, inputs: Any, context: Any, needs: Needs) -> Outputs:
        """The teacher's outputs for the same rows (called under ``no_grad``)."""
        ...


class ClassifierView:
    """Classification: a row per image, and the label cross-entropy as the task's loss."""

    def student(
        self, net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, needs: Needs
    ) -> tuple[Outputs, torch.Tensor, dict[str, torch.Tensor], None]:
        out = run_network(net, inputs, needs.features, needs.preact)
        # float32 (bf16 / fp16 logits promoted), float64 logits in float64, as the losses
        return out, targets, {"ce": F.cross_entropy(wide(out.logits), targets)}, None

    def teacher(self, net: nn.Module, inputs: torch.Tensor, context: None, needs: Needs) -> Outputs:
        return run_network(net, inputs, needs.features, needs.preact)


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


def network_shapes(model: nn.Module, num_classes: int, sample: torch.Tensor) -> Shapes:
    """Feature shapes of ``model`` on ``sample`` ``[1+, C, H, W]`` (eval mode, no gradient)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = run_network(model, sample, features=True)
    model.train(was_training)
    assert out.embedding is not None
    return Shapes(
        tuple(tuple(f.shape[1:]) for f in out.feats), int(out.embedding.shape[1]), num_classes
    )


class Distiller(nn.Module):
    """Student (trained) + frozen teacher + one or more methods whose terms are summed, run
    through the task's :class:`View` (classification's by default)."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        methods: list[Method],
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
        self, inputs: Any, targets: Any, teacher: TeacherSource = None, **ctx: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training batch -> (student logits ``[B, K]``, {term name: weighted scalar}).

        ``ctx`` (``epoch``, ``step``, ``index``, ``gather``) is passed on to every method in the
        :class:`Batch`; ``teacher`` gives the teacher's outputs instead of running it (e.g. from
        a cache; see :data:`TeacherSource`).
        """
        out, rows, own, context = self.view.student(self.student, inputs, targets, self.needs)
        w_ce = self.methods[0].options.w_ce
        terms = {name: w_ce * value for name, value in own.items()}

        def run_teacher() -> Outputs:
            if teacher is None:
                return self.teacher_outputs(inputs, context)
            return teacher if isinstance(teacher, Outputs) else teacher()

        batch = Batch(out, rows, run_teacher, **ctx)
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
