"""How a detector shows a training batch to the distillation methods (the detection task's
:class:`~ckd.methods.views.View`).

1. The student runs as a whole, ``student(images, targets) -> its own losses`` (so it can be
   wrapped in DistributedDataParallel: nothing else calls into it). Hooks capture, on the way,
   its transformed batch (resized, normalised, padded), its FPN features, the RoIs
   ``RoIHeads.select_training_samples`` sampled for the box head with their labels, and the box
   predictor's class logits for them: the student's :class:`~ckd.methods.base.Outputs` are the
   ``[B, K]`` RoI logits (B = sampled RoIs of the whole batch) and the FPN levels as ``feats``,
   the methods' targets the RoIs' labels (0 = background).
2. The teacher, frozen and in eval mode, sees *the student's transformed images* re-normalised
   to its own ``image_mean`` / ``image_std`` (padding set back to zero, as its own transform
   would pad): both detectors share one input size setting, so the student's proposals are
   already in the teacher's coordinates and need no mapping. Its backbone gives its FPN levels
   and its box head (``box_roi_pool`` + ``box_head`` + ``box_predictor``) the class logits of
   the same proposals.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList

from ckd.methods.base import Needs, Outputs
from ckd.tasks.detection.models import FPN_LEVELS


class Capture:
    """What the hooks of :func:`capture` record during one training forward of a detector
    (and the student's normalisation, which the teacher's input is converted from)."""

    images: ImageList
    features: dict[str, torch.Tensor]
    proposals: list[torch.Tensor]
    labels: torch.Tensor
    class_logits: torch.Tensor
    mean: list[float]
    std: list[float]


@contextmanager
def capture(model: GeneralizedRCNN) -> Iterator[Capture]:
    """Record the transformed batch, FPN features, sampled RoIs (``[R_i, 4]`` per image) with
    their labels (``[B]``), and RoI class logits (``[B, K]``) of a training forward."""
    cap = Capture()
    cap.mean, cap.std = model.transform.image_mean, model.transform.image_std
    heads = model.roi_heads
    select = heads.select_training_samples

    def select_and_keep(proposals: list[torch.Tensor], targets: list[dict[str, Any]]) -> Any:
        out = select(proposals, targets)
        cap.proposals, cap.labels = out[0], torch.cat(out[2])
        return out

    def keep_logits(module: torch.nn.Module, args: Any, output: Any) -> None:
        if not hasattr(cap, "class_logits"):  # the box predictor runs once per training forward
            cap.class_logits = output[0]

    handles = [
        model.transform.register_forward_hook(lambda m, a, out: setattr(cap, "images", out[0])),
        model.backbone.register_forward_hook(lambda m, a, out: setattr(cap, "features", out)),
        heads.box_predictor.register_forward_hook(keep_logits),
    ]
    shadowed = heads.__dict__.get("select_training_samples")  # an enclosing capture's
    heads.select_training_samples = select_and_keep  # shadows the method on this instance only
    try:
        yield cap
    finally:
        if shadowed is None:
            del heads.select_training_samples
        else:
            heads.select_training_samples = shadowed
        for h in handles:
            h.remove()


def renormalize(
    images: ImageList,
    mean_from: list[float],
    std_from: list[float],
    mean_to: list[float],
    std_to: list[float],
) -> torch.Tensor:
    """The batch ``[N, 3, H, W]`` normalised with ``(mean_to, std_to)`` instead of
    ``(mean_from, std_from)``; the padding beyond each ``images.image_sizes`` entry stays 0."""
    x: torch.Tensor = images.tensors
    if list(mean_from) == list(mean_to) and list(std_from) == list(std_to):
        return x

    def column(values: list[float]) -> torch.Tensor:  # [3, 1, 1]
        return torch.tensor(values, dtype=x.dtype, device=x.device)[:, None, None]

    m0, s0 = column(mean_from), column(std_from)
    m1, s1 = column(mean_to), column(std_to)
    out = (x * s0 + m0 - m1) / s1
    for i, (h, w) in enumerate(images.image_sizes):
        out[i, :, h:, :] = 0
        out[i, :, :, w:] = 0
    return out


def roi_logits(
    model: GeneralizedRCNN,
    features: dict[str, torch.Tensor],
    proposals: list[torch.Tensor],
    image_sizes: list[tuple[int, int]],
) -> torch.Tensor:
    """``[sum R_i, K]``: ``model``'s box head on ``proposals`` (per image ``[R_i, 4]``) over its
    FPN ``features``."""
    heads = model.roi_heads
    x = heads.box_head(heads.box_roi_pool(features, proposals, image_sizes))
    logits: torch.Tensor = heads.box_predictor(x)[0]
    return logits


def fpn_levels(features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The FPN levels ``'0'..'3', 'pool'`` (strides 4..64), shallow to deep."""
    return tuple(features[name] for name in FPN_LEVELS)


class DetectorView:
    """The detection task's view of a batch (see the module docstring)."""

    def student(
        self,
        net: GeneralizedRCNN,
        images: list[torch.Tensor],
        targets: list[dict[str, Any]],
        needs: Needs,
    ) -> tuple[Outputs, torch.Tensor, dict[str, torch.Tensor], Capture]:
        with capture(net) as cap:
            losses = dict(net(images, targets))
        feats = fpn_levels(cap.features)
        return Outputs(cap.class_logits, feats, preact=feats), cap.labels, losses, cap

    def teacher(
        self, net: GeneralizedRCNN, images: list[torch.Tensor], cap: Capture, needs: Needs
    ) -> Outputs:
        t = net.transform
        x = renormalize(cap.images, cap.mean, cap.std, t.image_mean, t.image_std)
        features = net.backbone(x)
        feats = fpn_levels(features)
        logits = roi_logits(net, features, cap.proposals, cap.images.image_sizes)
        return Outputs(logits, feats, preact=feats)
