"""Detection and instance segmentation: CKD for torchvision Faster R-CNN / Mask R-CNN on COCO.

- :mod:`~ckd.detection.config`: the ``task: detection`` config sections.
- :mod:`~ckd.detection.models`: the detectors (ResNet-18/50/101, MobileNetV2 FPN backbones).
- :mod:`~ckd.detection.data`: COCO-format data through pycocotools; :mod:`.shapes` generates a
  small offline COCO-format dataset for tests and the demo.
- :mod:`~ckd.detection.view`: how a detector's batch is shown to the methods (RoI logits,
  FPN levels), so ``ckd``, ``kd``, ``dkd`` and ``reviewkd`` serve detection unchanged.
- :mod:`~ckd.detection.evaluate`: COCO box and mask AP.

The task itself (:mod:`ckd.tasks.detection`) puts these together for the one trainer.
"""
