"""The CIFAR model zoo of the knowledge-distillation literature (RepDistiller / mdistiller).

Every model maps [B, in_channels, 32, 32] images to [B, num_classes] logits and has the same
layer names, parameter shapes and forward computation as the reference zoo, so reference
teacher checkpoints load with ``load_weights(model, path)`` (strict). ``model.stage_names``
name the submodules whose outputs are the reference's intermediate features (shallow to
deep) and ``model.classifier_name`` the final ``nn.Linear`` (its input is the embedding).
"""

from __future__ import annotations

from torch import nn

# importing the architecture modules registers their models
from ckd.models import (  # noqa: F401
    mobilenetv2,
    resnet,
    resnetv2,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
from ckd.models.common import MODELS, ZooModel
from ckd.models.features import FeatureExtractor, stage_features
from ckd.models.weights import count_parameters, extract_state_dict, load_weights


def create_model(name: str, num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """Build zoo model ``name``; an unknown name raises ``ckd.registry.UnknownNameError``."""
    return MODELS.get(name)(num_classes, in_channels)


def model_names() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()


__all__ = [
    "MODELS",
    "FeatureExtractor",
    "ZooModel",
    "count_parameters",
    "create_model",
    "extract_state_dict",
    "load_weights",
    "model_names",
    "stage_features",
]
