"""The classification task's networks: a classifier of the zoo, torchvision or timm for a
dataset (:func:`build_model`), and the distiller around the student and the teacher
(:func:`build_distiller`, through the shared :func:`ckd.methods.build_distiller`)."""

from __future__ import annotations

import torch
from torch import nn

from ckd.data import DatasetInfo
from ckd.errors import CheckpointError, ConfigError
from ckd.methods import METHODS, ClassifierView, Distiller, Shapes, network_shapes
from ckd.methods import build_distiller as assemble
from ckd.models import Renormalize, create_model, is_external, load_weights
from ckd.models.pretrained import create_pretrained
from ckd.tasks.classification.config import ClassificationConfig, ModelConfig


def build_model(model: ModelConfig, info: DatasetInfo) -> nn.Module:
    """A model for this dataset (zoo, ``tv:`` or ``timm:``); weights from ``model.checkpoint``
    when given. With ``model.input_mean`` / ``input_std`` the network is wrapped in
    :class:`~ckd.models.Renormalize` (after loading, and with the same state-dict keys), so it
    sees the dataset's images normalised its own way."""
    size = info.image_size
    if model.pretrained:  # the published weights, from the local cache; a new head if needed
        net = create_pretrained(model.name, info.num_classes, info.in_channels, size)
    else:
        net = create_model(model.name, info.num_classes, info.in_channels, size)
    if is_external(model.name) or size != 32:  # it may not run on these images: say so now
        blank = torch.zeros(2, info.in_channels, info.image_size, info.image_size)
        modes = {m: m.training for m in net.modules()}
        try:
            with torch.no_grad():
                net.eval()(blank)
        except (RuntimeError, ValueError, AssertionError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"{model.name} does not run on {info.name} images "
                f"({info.in_channels}x{info.image_size}x{info.image_size}): {reason}"
            ) from None
        finally:
            for m, mode in modes.items():
                m.training = mode
    if model.checkpoint is not None:
        try:
            load_weights(net, model.checkpoint)
        except CheckpointError:
            raise  # names the file: not a checkpoint at all
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"{model.checkpoint}: does not fit {model.name}: {e}") from None
    if model.input_mean is not None and model.input_std is not None:
        try:
            net = Renormalize(net, info.mean, info.std, model.input_mean, model.input_std)
        except ValueError as e:
            raise ConfigError(f"{model.name}: {e}") from None
    return net


def build_distiller(cfg: ClassificationConfig, info: DatasetInfo, num_train: int) -> Distiller:
    """The configured method(s) around a fresh student and the (frozen) teacher; feature
    methods are sized by the networks' shapes on a blank batch of the dataset's images."""
    student = build_model(cfg.student, info)
    teacher = build_model(cfg.teacher, info) if cfg.teacher is not None else None
    blank = torch.zeros(2, info.in_channels, info.image_size, info.image_size)
    return assemble(
        cfg.method.parts(),
        student,
        teacher,
        info.num_classes,
        num_train,
        shapes=lambda net: network_shapes(net, info.num_classes, blank),
        view=ClassifierView(),
        check=lambda shapes: check_stage_maps(cfg, shapes),
    )


def check_stage_maps(cfg: ClassificationConfig, shapes: dict[str, Shapes | None]) -> None:
    """Refuse a method that reads convolutional stage maps on a network that has fewer than two
    (a vision transformer: its only ``[B, C, H, W]`` map is the patch embedding; its blocks give
    token sequences)."""
    readers = [
        p.name
        for p in cfg.method.parts()
        if METHODS.get(p.name).needs_features and not METHODS.get(p.name).embedding_only
    ]
    if not readers:
        return
    for role in ("student", "teacher"):
        found, model = shapes[role], getattr(cfg, role)
        if found is not None and model is not None and len(found.feats) < 2:
            logit = [n for n, c in METHODS.items() if not c.needs_features and c.needs_teacher]
            embed = [n for n, c in METHODS.items() if c.needs_features and c.embedding_only]
            raise ConfigError(
                f"{role} {model.name} has no convolutional stage maps (e.g. a vision "
                f"transformer: its blocks give token sequences), which method {readers[0]!r} "
                f"reads; use a logit method ({', '.join(logit)}) or one reading the embedding "
                f"({', '.join(embed)})"
            )
