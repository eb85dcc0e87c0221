"""Detection and instance segmentation (``task: detection``): CKD for torchvision Faster R-CNN /
Mask R-CNN on COCO.

- :mod:`~ckd.tasks.detection.config`: the task's config sections.
- :mod:`~ckd.tasks.detection.models`: the detectors (ResNet-18/50/101, MobileNetV2 FPN backbones).
- :mod:`~ckd.tasks.detection.data`: COCO-format data through pycocotools; :mod:`.shapes`
  generates a small offline COCO-format dataset for tests and the demo.
- :mod:`~ckd.tasks.detection.view`: how a detector's batch is shown to the methods (RoI logits,
  FPN levels), so ``ckd``, ``kd``, ``dkd`` and ``reviewkd`` serve detection unchanged.
- :mod:`~ckd.tasks.detection.evaluate`: COCO box and mask AP.
- :mod:`~ckd.tasks.detection.task`: the task the engine trains, built from these.
"""

from ckd.tasks.detection.config import DetConfig
from ckd.tasks.detection.task import Detection

__all__ = ["DetConfig", "Detection"]
