"""Training engine: the trainer, evaluation, schedules, checkpoints and metric logs.

Nothing here names a method, a model or a dataset: those come from the registries.
"""

from ckd.engine.evaluate import evaluate
from ckd.engine.trainer import Trainer

__all__ = ["Trainer", "evaluate"]
