"""The models: the CIFAR model zoo of the knowledge-distillation literature (RepDistiller /
mdistiller, :mod:`ckd.models.zoo`), torchvision and timm classifiers, feature hooks, weights.

Every model maps [B, in_channels, 32, 32] images to [B, num_classes] logits and has the same
layer names, parameter shapes and forward computation as the reference zoo, so reference
teacher checkpoints load with ``load_weights(model, path)`` (strict). ``model.stage_names``
name the submodules whose outputs are the reference's intermediate features (shallow to
deep) and ``model.classifier_name`` the final ``nn.Linear`` (its input is the embedding).

Beside the zoo, ``create_model`` builds torchvision classification models as ``tv:<name>``
(random weights) and timm models as ``timm:<name>`` (when timm is installed); their feature
stages are inferred by hooks (:func:`infer_stage_names`). :class:`Renormalize` lets a model see
inputs normalised with its own mean/std.
"""

from __future__ import annotations

from torch import nn

from ckd.models.external import PREFIXES, external_factory, is_external, torchvision_names
from ckd.models.features import (
    FeatureExtractor,
    feature_names,
    infer_stage_names,
    stage_features,
)
from ckd.models.normalize import Renormalize
from ckd.models.weights import count_parameters, extract_state_dict, load_weights
from ckd.models.zoo import MODELS, ZooModel  # importing the zoo registers its models


def create_model(
    name: str, num_classes: int = 100, in_channels: int = 3, image_size: int | None = None
) -> nn.Module:
    """Build zoo model ``name``, or ``tv:<torchvision name>`` / ``timm:<timm name>`` with random
    weights; an unknown name raises ``ckd.registry.UnknownNameError`` (listing the zoo names and
    the prefixes), as does a ``timm:`` name when timm is not installed. ``image_size`` (the
    input side) reaches the timm models that take an ``img_size`` (vision transformers); the zoo
    models are made for 32x32 images."""
    if is_external(name):
        return external_factory(name)(num_classes, in_channels, image_size)
    return MODELS.get(name)(num_classes, in_channels)


def model_names() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()


__all__ = [
    "MODELS",
    "PREFIXES",
    "FeatureExtractor",
    "Renormalize",
    "ZooModel",
    "count_parameters",
    "create_model",
    "extract_state_dict",
    "feature_names",
    "infer_stage_names",
    "is_external",
    "load_weights",
    "model_names",
    "stage_features",
    "torchvision_names",
]
