"""Image classification (``task: classification``): its config sections
(:mod:`~ckd.tasks.classification.config`), networks and distiller
(:mod:`~ckd.tasks.classification.models`), the task the engine trains
(:mod:`~ckd.tasks.classification.task`) and a checkpoint's model and test set
(:mod:`~ckd.tasks.classification.checkpoints`)."""

from ckd.tasks.classification.checkpoints import (
    CheckpointData,
    Student,
    checkpoint_model,
    evaluate_checkpoint,
    load_student,
    saved_data_config,
)
from ckd.tasks.classification.config import ClassificationConfig, DataConfig, ModelConfig
from ckd.tasks.classification.models import build_distiller, build_model
from ckd.tasks.classification.task import Classification

__all__ = [
    "CheckpointData",
    "Classification",
    "ClassificationConfig",
    "DataConfig",
    "ModelConfig",
    "Student",
    "build_distiller",
    "build_model",
    "checkpoint_model",
    "evaluate_checkpoint",
    "load_student",
    "saved_data_config",
]
