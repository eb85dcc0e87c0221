"""Models from other libraries as teachers or students: ``tv:<name>`` and ``timm:<name>``.

``tv:resnet34``, ``tv:mobilenet_v3_small``, ... are torchvision's classification models, built
with ``weights=None`` (random weights, nothing is downloaded) and ``num_classes``;
``timm:<name>`` are timm's, built with ``pretrained=False`` when timm is installed (an optional
dependency: ``pip install ckd-distill[timm]``). Another number of input channels than 3
(Fashion-MNIST's 1) is met by adapting the first convolution. The common CNNs end with a global
pooling and run on any image size; a timm model that takes ``img_size`` (ViT, DeiT, ...) is built
for the dataset's (e.g. ``img_size=32``: 2x2 patches of 16 px), others as they are. A model that
cannot run on the dataset's images is reported when it is built. Published weights:
:mod:`ckd.models.pretrained`.

They name no feature stages: :func:`ckd.models.features.infer_stage_names` finds them by hooks.
The zoo registry :data:`ckd.models.MODELS` resolves the prefixed names (see
:class:`ModelRegistry`), so configs, ``create_model`` and the command line accept them as they
accept zoo names.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ckd.registry import Registry, UnknownNameError

TV_PREFIX = "tv:"
TIMM_PREFIX = "timm:"
PREFIXES = (TV_PREFIX, TIMM_PREFIX)
PREFIX_HELP = "or tv:<torchvision classification model> (e.g. tv:resnet18), timm:<timm model>"
TIMM_INSTALL = (
    "timm is not installed; pip install 'ckd-distill[timm]' (or pip install timm), or use a "
    "torchvision model, tv:<name>"
)

# torchvision builders whose default (weights=None) model has auxiliary heads: their training
# forward would return a tuple instead of logits
_NO_AUX = {"googlenet", "inception_v3"}


def is_external(name: str) -> bool:
    """Whether ``name`` carries one of the prefixes ``tv:`` / ``timm:``."""
    return isinstance(name, str) and name.startswith(PREFIXES)


def torchvision_names() -> list[str]:
    """torchvision's classification models (detection, segmentation, video, quantized ones are
    left out), sorted."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


@torch.no_grad()
def adapt_input_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Give ``model``'s first convolution (registered first, which is the stem of the
    torchvision / timm CNNs) ``in_channels`` inputs instead of 3, in place.

    The new kernel is the old one averaged over its input channels, repeated and rescaled by
    ``3 / in_channels``: a grey image then gives what its 3-channel copy gave before.
    """
    found = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.Conv2d to adapt to {in_channels} inputs"
        )
    name, old = found
    if old.in_channels == in_channels:
        return model
    if old.groups != 1:
        raise ValueError(f"cannot adapt the grouped first convolution {name!r} to {in_channels}")
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,  # type: ignore[arg-type]  # tuple[int, ...] in torch's stubs
        old.stride,  # type: ignore[arg-type]  # tuple[int, ...] in torch's stubs
        old.padding,  # type: ignore[arg-type]  # tuple[int, ...] in torch's stubs
        old.dilation,  # type: ignore[arg-type]  # tuple[int, ...] in torch's stubs
        groups=1,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    ).to(old.weight.device, old.weight.dtype)
    mean = old.weight.mean(dim=1, keepdim=True)
    new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (old.in_channels / in_channels))
    if old.bias is not None:
        assert new.bias is not None  # made with one
        new.bias.copy_(old.bias)
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, new)
    return model


def build_torchvision(
    arch: str, num_classes: int, in_channels: int = 3, image_size: int | None = None
) -> nn.Module:
    """torchvision classification model ``arch`` with random weights and ``num_classes``
    (``image_size`` is not used: torchvision's models take any size, or a fixed one)."""
    import torchvision.models as tvm

    kwargs: dict = {"weights": None, "num_classes": num_classes}
    if arch in _NO_AUX:
        kwargs.update(aux_logits=False, init_weights=True)
    model = tvm.get_model(arch, **kwargs)
    if in_channels != 3:
        adapt_input_channels(model, in_channels)
    return model


def create_timm(arch: str, image_size: int | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(arch, **kwargs)``, with ``img_size=image_size`` when ``image_size``
    differs from the model's default input size and the model takes ``img_size`` (vision
    transformers do; CNNs, which take any size, do not)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    default = cfg.input_size[-1] if cfg is not None and cfg.input_size else None
    if image_size is not None and image_size != default:
        try:
            return timm.create_model(arch, img_size=image_size, **kwargs)
        except TypeError as e:
            if "img_size" not in str(e):
                raise
    return timm.create_model(arch, **kwargs)


def build_timm(
    arch: str, num_classes: int, in_channels: int = 3, image_size: int | None = None
) -> nn.Module:
    """timm model ``arch``, never pretrained (nothing is downloaded), for ``image_size`` images
    when it takes an ``img_size`` (:func:`create_timm`)."""
    return create_timm(
        arch, image_size, pretrained=False, num_classes=num_classes, in_chans=in_channels
    )


def external_factory(name: str) -> Callable[..., nn.Module]:
    """The factory ``f(num_classes, in_channels, image_size=None)`` of a prefixed name; an
    unknown one raises :class:`~ckd.registry.UnknownNameError` with a one-line reason."""
    if name.startswith(TV_PREFIX):
        arch = name[len(TV_PREFIX) :]
        known = torchvision_names()
        if arch not in known:
            raise UnknownNameError(
                f"unknown torchvision model {arch!r} in {name!r}; known: {', '.join(known)}"
            )
        return functools.partial(build_torchvision, arch)
    arch = name[len(TIMM_PREFIX) :]
    if not timm_available():
        raise UnknownNameError(f"model {name!r} needs timm: {TIMM_INSTALL}")
    import timm

    if not timm.is_model(arch):
        raise UnknownNameError(f"unknown timm model {arch!r} in {name!r}; see timm.list_models()")
    return functools.partial(build_timm, arch)


class ModelRegistry(Registry[Callable[[int, int], nn.Module]]):
    """The zoo registry, which also resolves ``tv:`` / ``timm:`` names.

    Listing (iteration, :meth:`names`, :meth:`items`) shows the zoo only. ``name in MODELS`` is
    true for a torchvision classification model's ``tv:`` name and for any ``timm:`` name when
    timm is absent (building it then fails with a line that says timm is missing), so a config
    naming one passes validation; :meth:`get` resolves them to factories.
    """

    def get(self, name: str) -> Callable[[int, int], nn.Module]:
        if is_external(name):
            return external_factory(name)
        try:
            return super().get(name)
        except UnknownNameError as e:
            raise UnknownNameError(f"{e}; {PREFIX_HELP}") from None

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and is_external(name):
            if name.startswith(TV_PREFIX):
                return name[len(TV_PREFIX) :] in torchvision_names()
            if not timm_available():
                return True  # let the build say that timm is missing
            import timm

            return bool(timm.is_model(name[len(TIMM_PREFIX) :]))
        return super().__contains__(name)
