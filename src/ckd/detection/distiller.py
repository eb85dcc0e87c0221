"""The detection distiller: a torchvision student detector, its frozen teacher, and methods.

One training step:

1. The student runs as a whole, ``student(images, targets) -> its own losses`` (so it can be
   wrapped in DistributedDataParallel later: nothing else calls into it). Hooks capture, on the
   way, its transformed batch (resized, normalised, padded), its FPN features, the RoIs
   ``RoIHeads.select_training_samples`` sampled for the box head with their labels, and the box
   predictor's class logits for them.
2. The teacher, frozen and in eval mode, sees *the student's transformed images* re-normalised
   to its own ``image_mean`` / ``image_std`` (padding set back to zero, as its own transform
   would pad): both detectors share one input size setting, so the student's proposals are
   already in the teacher's coordinates and need no mapping. Under ``no_grad`` its backbone
   gives its FPN features and its box head (``box_roi_pool`` + ``box_head`` + ``box_predictor``)
   the class logits of the same proposals.
3. Each method turns the :class:`~ckd.detection.methods.DetBatch` into weighted terms, summed
   with the detector's losses by the trainer.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList

from ckd.detection.methods import DetBatch, DetMethod
from ckd.detection.models import use_sizes
from ckd.methods.base import Distiller


class Capture:
    """What the hooks of :func:`capture` record during one training forward of a detector."""

    images: ImageList
    features: dict[str, torch.Tensor]
    proposals: list[torch.Tensor]
    labels: torch.Tensor
    class_logits: torch.Tensor


@contextmanager
def capture(model: GeneralizedRCNN) -> Iterator[Capture]:
    """Record the transformed batch, FPN features, sampled RoIs (``[R_i, 4]`` per image) with
    their labels (``[B]``), and RoI class logits (``[B, K]``) of a training forward."""
    cap = Capture()
    heads = model.roi_heads
    select = heads.select_training_samples

    def select_and_keep(proposals, targets):
        out = select(proposals, targets)
        cap.proposals, cap.labels = out[0], torch.cat(out[2])
        return out

    def keep_logits(module, args, output):
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
    x = images.tensors
    if list(mean_from) == list(mean_to) and list(std_from) == list(std_to):
        return x
    f = dict(dtype=x.dtype, device=x.device)
    m0, s0 = torch.tensor(mean_from, **f)[:, None, None], torch.tensor(std_from, **f)[:, None, None]
    m1, s1 = torch.tensor(mean_to, **f)[:, None, None], torch.tensor(std_to, **f)[:, None, None]
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
    return heads.box_predictor(x)[0]


class DetDistiller(Distiller):
    """Student detector (trained) + frozen teacher detector + methods whose terms are summed.

    ``train_sizes`` / ``test_sizes``: the student's resize sizes in training (one drawn per
    batch) and in evaluation, switched by :meth:`train`.
    """

    def __init__(
        self,
        student: GeneralizedRCNN,
        teacher: GeneralizedRCNN | None,
        methods: list[DetMethod],
        train_sizes: tuple[int, ...],
        test_sizes: tuple[int, ...],
    ) -> None:
        super().__init__(student, teacher, methods)  # type: ignore[arg-type]
        self.train_sizes, self.test_sizes = tuple(train_sizes), tuple(test_sizes)

    def train(self, mode: bool = True) -> DetDistiller:
        super().train(mode)
        use_sizes(self.student, self.train_sizes if mode else self.test_sizes)
        return self

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:  # type: ignore[override]
        """Inference (eval mode): the student's detections per image, in its pixels."""
        return self.student(images)

    @torch.no_grad()
    def teacher_outputs(  # type: ignore[override]
        self, images: ImageList, proposals: list[torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The teacher's FPN features and RoI class logits ``[sum R_i, K]`` for the student's
        transformed ``images`` and sampled ``proposals``."""
        t, s = self.teacher, self.student
        assert t is not None
        x = renormalize(
            images,
            s.transform.image_mean,
            s.transform.image_std,
            t.transform.image_mean,
            t.transform.image_std,
        )
        features = t.backbone(x)
        return features, roi_logits(t, features, proposals, images.image_sizes)

    def forward_train(  # type: ignore[override]
        self, images: list[torch.Tensor], targets: list[dict[str, Any]], iteration: int = 0
    ) -> dict[str, torch.Tensor]:
        """One training batch (images ``[3, H_i, W_i]`` in [0, 1]) -> {term name: scalar}: the
        detector's losses (``loss_classifier``, ``loss_box_reg``, ``loss_objectness``,
        ``loss_rpn_box_reg``, ``loss_mask``) and each method's terms."""
        with capture(self.student) as cap:
            terms = dict(self.student(images, targets))
        teacher = None  # run lazily: only when a method reads it
        if self.teacher is not None:
            teacher = functools.partial(self.teacher_outputs, cap.images, cap.proposals)
        batch = DetBatch(
            cap.features, cap.proposals, cap.labels, cap.class_logits, teacher, iteration
        )
        for method in self.methods:
            for name, value in method(batch).items():
                terms.setdefault(name, value)
        return terms
