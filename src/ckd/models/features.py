"""Read intermediate tensors of a model through forward hooks.

Names are dotted submodule names as in ``model.named_modules()``. A plain name captures the
module's output; ``"name:in"`` captures its (first) input, e.g. ``"fc:in"`` is the pooled
embedding [B, D] that a zoo model's classifier reads. Captured tensors keep their autograd
graph (nothing is detached), so feature losses can back-propagate through them. A module
called several times in one forward keeps its last tensor (zoo stage modules run once).

Models that do not name their stages (torchvision, timm) get them from
:func:`infer_stage_names`, which :func:`stage_features` falls back to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

INPUT_SUFFIX = ":in"
#: A forward hook: ``(module, inputs, output) -> None``.
Hook = Callable[[nn.Module, tuple[Any, ...], Any], None]


class FeatureExtractor:
    """Hooks the named submodules; after each forward, ``features[name]`` holds the tensor.

    Use as a context manager (hooks are removed on exit) or call :meth:`remove`::

        with FeatureExtractor(model, [*model.stage_names, model.classifier_name + ":in"]) as fx:
            logits = model(x)
        feats = [fx.features[n] for n in model.stage_names]
    """

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.names = list(names)
        self.features: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        try:
            for name in self.names:
                take_input = name.endswith(INPUT_SUFFIX)
                module_name = name[: -len(INPUT_SUFFIX)] if take_input else name
                try:
                    module = model.get_submodule(module_name)
                except AttributeError:
                    raise ValueError(
                        f"{type(model).__name__} has no submodule {module_name!r}"
                    ) from None
                self._handles.append(module.register_forward_hook(self._hook(name, take_input)))
        except BaseException:
            self.remove()
            raise

    def _hook(self, name: str, take_input: bool) -> Hook:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            self.features[name] = inputs[0] if take_input else output

        return hook

    def clear(self) -> None:
        """Forget the captured tensors (hooks stay)."""
        self.features.clear()

    def remove(self) -> None:
        """Remove all hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def stage_features(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
    """Run ``model`` on ``x``; return (logits [B, K], stage feature maps shallow to deep,
    pooled embedding [B, D]) using the model's ``stage_names`` and ``classifier_name``, or, for a
    model that has none (torchvision, timm), the names :func:`infer_stage_names` finds."""
    stages, classifier = feature_names(model, x)
    embed_name = f"{classifier}{INPUT_SUFFIX}"
    with FeatureExtractor(model, [*stages, embed_name]) as fx:
        logits = model(x)
    return logits, [fx.features[n] for n in stages], fx.features[embed_name]


def feature_names(model: nn.Module, sample: Tensor) -> tuple[tuple[str, ...], str]:
    """``(stage_names, classifier_name)``: the model's own when it names them, else inferred."""
    stages = getattr(model, "stage_names", None)
    classifier = getattr(model, "classifier_name", None)
    if stages and classifier:
        return tuple(stages), classifier
    return infer_stage_names(model, sample)


# modules whose output is not a stage of the trunk: global pooling (torchvision's VGG even
# up-samples to 7x7 there), and flattening / dropout before the head
_NOT_STAGES = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)
_POOLS = (nn.AvgPool2d, nn.MaxPool2d, nn.LPPool2d)
_CACHE_ATTR = "_ckd_inferred_feature_names"


def infer_stage_names(model: nn.Module, sample: Tensor) -> tuple[tuple[str, ...], str]:
    """Find stage and classifier names of a model that does not name them, by one forward.

    One forward of ``sample[:2]`` (no gradient, eval mode, then each module's mode restored)
    with a hook on every submodule records, in the order modules finish, each output that is a
    ``[B, C, H, W]`` map (``H : W`` as the input's, so channels-last tensors inside transformer
    blocks do not count; global pooling to ``1x1``, flatten and dropout never count). Then:

    - a map is *on the trunk* when its module runs once and no module finishing after it gives
      a larger map (this drops side branches such as squeeze-excitation's pooled ``1x1`` maps);
    - a module taking an ``H x W`` map to a smaller one with only those two sizes on the trunk
      inside it is a *downsampling unit*: its inner maps at the input size (e.g. the expansion
      conv of an inverted residual) are parts of the unit, not stages;
    - the **stages** are the last remaining trunk module at each resolution, shallow to deep,
      e.g. ``relu, layer1, layer2, layer3, layer4`` for a torchvision ResNet.

    The **classifier** is the last ``nn.Linear`` to run, which must produce the logits (its
    input is the embedding). The result is cached on the model per input shape ``(C, H, W)``.

    Raises:
        ValueError: no ``[B, C, H, W]`` output, or no final ``nn.Linear`` giving the logits.
    """
    key = tuple(sample.shape[1:])
    cache: dict = model.__dict__.setdefault(_CACHE_ATTR, {})
    if key in cache:
        return cache[key]
    in_h, in_w = sample.shape[-2:]

    def size(t: Any) -> tuple[int, int] | None:
        """``(H, W)`` of an NCHW map whose aspect is the input's, else None."""
        if not isinstance(t, Tensor) or t.dim() != 4:
            return None
        h, w = t.shape[-2:]
        return (h, w) if abs(h * in_w - w * in_h) <= max(in_h, in_w) else None

    order: list[str] = []  # module names as they finish (a module run twice: its last place)
    sizes: dict[str, tuple[tuple[int, int] | None, tuple[int, int] | None]] = {}  # in, out
    calls: dict[str, int] = {}
    linears: list[tuple[str, Any]] = []

    def hook(name: str, module: nn.Module) -> Hook:
        def record(_m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name in sizes:
                order.remove(name)
            order.append(name)
            res_in = size(inputs[0]) if inputs else None
            res_out = None if isinstance(module, _NOT_STAGES) else size(output)
            if isinstance(module, _POOLS) and res_out == (1, 1) and res_in != (1, 1):
                res_out = None  # global pooling (e.g. the zoo's AvgPool2d(8)) ends the trunk
            sizes[name] = (res_in, res_out)
            if isinstance(module, nn.Linear):
                linears.append((name, output))

        return record

    handles = [m.register_forward_hook(hook(n, m)) for n, m in model.named_modules() if n]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            logits = model(sample[:2])
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    what = f"{type(model).__name__} on input {list(key)}"

    def larger(a: tuple[int, int], b: tuple[int, int]) -> bool:
        return a[0] > b[0] or a[1] > b[1]

    maps = [(n, res) for n in order if (res := sizes[n][1]) is not None]
    trunk: dict[str, tuple[int, int]] = {}
    for i, (name, res) in enumerate(maps):
        if calls[name] == 1 and not any(larger(r, res) for _, r in maps[i + 1 :]):
            trunk[name] = res

    def inside(name: str, outer: str) -> bool:
        return name.startswith(outer + ".")

    units = []  # (name, input size) of downsampling units
    for name, (res_in, res_out) in sizes.items():
        if res_in is None or res_out is None or res_in == res_out or larger(res_out, res_in):
            continue
        inner = {r for n, r in trunk.items() if inside(n, name)}
        if calls[name] == 1 and inner <= {res_in, res_out}:
            units.append((name, res_in))
    stages: list[tuple[str, tuple[int, int]]] = []
    for name, res in trunk.items():
        if any(inside(name, u) and res == r for u, r in units):
            continue
        if stages and stages[-1][1] == res:
            stages[-1] = (name, res)
        else:
            stages.append((name, res))
    if not stages:
        raise ValueError(f"cannot infer feature stages of {what}: no [B, C, H, W] module output")
    heads = [n for n, out in linears if isinstance(out, Tensor) and out.shape == logits.shape]
    if not linears or not heads or heads[-1] != linears[-1][0]:
        raise ValueError(f"cannot infer the classifier of {what}: no final nn.Linear gives logits")
    result = (tuple(n for n, _ in stages), heads[-1])
    cache[key] = result
    return result
