"""torchvision Faster R-CNN / Mask R-CNN with ResNet-18/50/101 or MobileNetV2 FPN backbones.

Every backbone gives the same five FPN levels ``'0', '1', '2', '3', 'pool'`` (strides 4, 8, 16,
32, 64, ``fpn_channels`` channels each), so feature distillation pairs any teacher with any
student level by level. MobileNetV2 returns the last block of each stride (``features.3``,
``.6``, ``.13``, ``.18``: 24, 32, 96, 1280 channels at width 1), like the ResNets' ``layer1..4``.

Weights: a whole detector from ``checkpoint`` (``weights_only=True``, via
:func:`ckd.models.load_weights`); else the backbone from an ImageNet classification checkpoint
(``backbone_checkpoint``, torchvision's layout); torchvision's COCO weights (``weights: coco``,
ResNet-50 only, downloaded) only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn
from torchvision.models import MobileNetV2, ResNet
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ckd.errors import ConfigError
from ckd.models import load_weights
from ckd.tasks.detection.config import DetectorConfig, DetModelConfig, InputConfig

FPN_LEVELS = ("0", "1", "2", "3", "pool")
MOBILENET_RETURN = {"3": "0", "6": "1", "13": "2", "18": "3"}


def _norm(name: str) -> Callable[..., nn.Module]:
    return FrozenBatchNorm2d if name == "frozen_bn" else nn.BatchNorm2d


def _classifier(m: DetModelConfig, norm: Callable[..., nn.Module]) -> ResNet | MobileNetV2:
    if m.backbone == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(width_mult=m.width_mult, norm_layer=norm)
    return getattr(torchvision.models, m.backbone)(norm_layer=norm)


def _imagenet_classifier(m: DetModelConfig) -> ResNet | MobileNetV2:
    """The classification network of the backbone, with ImageNet weights when given."""
    net = _classifier(m, nn.BatchNorm2d)
    if m.backbone_checkpoint is not None:
        try:
            load_weights(net, m.backbone_checkpoint)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"{m.backbone_checkpoint}: does not fit {m.backbone}: {e}") from None
    if m.norm == "frozen_bn":  # FrozenBatchNorm2d takes BN's state (num_batches_tracked dropped)
        frozen = _classifier(m, FrozenBatchNorm2d)
        frozen.load_state_dict(net.state_dict())
        net = frozen
    return net


def build_backbone(m: DetModelConfig) -> BackboneWithFPN:
    """The FPN backbone: ``images [B, 3, H, W] -> {level: [B, fpn_channels, H/s, W/s]}``."""
    net = _imagenet_classifier(m)
    norm = _norm(m.norm) if m.norm == "bn" else None  # FPN's own layers: no norm unless bn
    k = m.trainable_layers
    if m.backbone.startswith("resnet"):  # as torchvision's resnet_fpn_backbone
        train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:k] + (["bn1"] if k == 5 else [])
        for name, p in net.named_parameters():
            p.requires_grad_(any(name.startswith(t) for t in train))
        c2 = net.inplanes // 8  # layer1's output channels (64 or 256)
        return BackboneWithFPN(
            net,
            {f"layer{i}": str(i - 1) for i in range(1, 5)},
            [c2 * 2**i for i in range(4)],
            m.fpn_channels,
            LastLevelMaxPool(),
            norm_layer=norm,
        )
    features = net.features
    # freeze as torchvision's mobilenet_backbone: the stages start at the stride-2 blocks
    starts = [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
    stages = [0, *starts, len(features) - 1]
    freeze_before = len(features) if k == 0 else stages[len(stages) - k]
    for block in features[:freeze_before]:
        block.requires_grad_(False)
    channels = [features[int(k)].out_channels for k in MOBILENET_RETURN]
    return BackboneWithFPN(
        features, MOBILENET_RETURN, channels, m.fpn_channels, LastLevelMaxPool(), norm_layer=norm
    )


def build_detector(
    m: DetModelConfig, det: DetectorConfig, size: InputConfig, num_classes: int
) -> GeneralizedRCNN:
    """A Faster/Mask R-CNN for ``num_classes`` (background included) at ``size``'s scales: in
    training mode one of ``size.min_size`` drawn per batch, in eval mode ``size.test_min_size``
    (switched by a forward pre-hook, so ``model.train()`` / ``.eval()`` is all it takes)."""
    model = _torchvision_coco(m, det, size, num_classes) if m.weights == "coco" else None
    if model is None:
        model = _build(m, det, size, num_classes)
    train_sizes, test_size = tuple(size.min_size), (size.test_min_size,)

    def pick_sizes(module: GeneralizedRCNN, args: object) -> None:
        module.transform.min_size = train_sizes if module.training else test_size

    model.register_forward_pre_hook(pick_sizes)
    return model


def _build(
    m: DetModelConfig, det: DetectorConfig, size: InputConfig, num_classes: int
) -> GeneralizedRCNN:
    backbone = build_backbone(m)
    c = m.fpn_channels
    anchors = AnchorGenerator(tuple((a,) for a in det.anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
    kwargs = dict(
        min_size=size.test_min_size,
        max_size=size.max_size,
        image_mean=list(m.image_mean),
        image_std=list(m.image_std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=det.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=det.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=det.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=det.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=det.rpn_batch_size_per_image,
        box_batch_size_per_image=det.box_batch_size_per_image,
        box_detections_per_img=det.box_detections_per_img,
        box_head=TwoMLPHead(c * 7 * 7, m.representation_size),
        box_predictor=FastRCNNPredictor(m.representation_size, num_classes),
    )
    if det.arch == "faster_rcnn":
        model: GeneralizedRCNN = FasterRCNN(backbone, **kwargs)
    else:
        h = m.mask_head_channels
        heads = MaskRCNNHeads(c, (h, h, h, h), 1)
        model = MaskRCNN(
            backbone, mask_head=heads, mask_predictor=MaskRCNNPredictor(h, h, num_classes), **kwargs
        )
    if m.checkpoint is not None:
        try:
            load_weights(model, m.checkpoint)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"{m.checkpoint}: does not fit this {det.arch}: {e}") from None
    return model


def _torchvision_coco(
    m: DetModelConfig, det: DetectorConfig, size: InputConfig, num_classes: int
) -> GeneralizedRCNN:
    """torchvision's COCO-trained ResNet-50 FPN detector (downloaded; 91 category-id classes)."""
    if num_classes != 91:
        raise ConfigError(
            f"weights: coco gives 91 classes (COCO category ids); the data has {num_classes}: "
            "set data.labels=category_id"
        )
    d = torchvision.models.detection
    build = d.fasterrcnn_resnet50_fpn if det.arch == "faster_rcnn" else d.maskrcnn_resnet50_fpn
    return build(
        weights="COCO_V1",
        min_size=size.test_min_size,
        max_size=size.max_size,
        box_batch_size_per_image=det.box_batch_size_per_image,
        trainable_backbone_layers=m.trainable_layers,
    )
