"""Detection and instance segmentation: CKD for torchvision Faster R-CNN / Mask R-CNN on COCO.

- :mod:`~ckd.detection.config`: the ``task: detection`` config (iteration-based schedules).
- :mod:`~ckd.detection.models`: the detectors (ResNet-18/50/101, MobileNetV2 FPN backbones).
- :mod:`~ckd.detection.data`: COCO-format data through pycocotools; :mod:`.shapes` generates a
  small offline COCO-format dataset for tests and the demo.
- :mod:`~ckd.detection.distiller` and :mod:`~ckd.detection.methods`: RoI-logit CKD / KD / DKD
  and the FPN ReviewKD loss.
- :mod:`~ckd.detection.trainer` and :mod:`~ckd.detection.evaluate`: training and COCO AP.

``ckd train <config>`` routes a config with ``task: detection`` here.
"""
