"""How a task runs its networks on a batch and shows the result to the methods.

A :class:`View` turns a task's batch into the rows the methods read: the student's
:class:`~ckd.methods.base.Outputs` (with gradient), the targets of its logit rows and the
task's own loss terms, and then the teacher's outputs for the same rows. :class:`ClassifierView`
is classification's (a row per image, the label cross-entropy); detection's shows a row per
region of interest (:mod:`ckd.tasks.detection.view`). :func:`run_network` runs a network with
forward hooks on its stages when features are asked for.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ckd.losses._checks import wide
from ckd.methods.base import Needs, Outputs, Shapes
from ckd.models.features import INPUT_SUFFIX, FeatureExtractor, feature_names


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
