"""Read intermediate tensors of a model through forward hooks.

Names are dotted submodule names as in ``model.named_modules()``. A plain name captures the
module's output; ``"name:in"`` captures its (first) input, e.g. ``"fc:in"`` is the pooled
embedding [B, D] that a zoo model's classifier reads. Captured tensors keep their autograd
graph (nothing is detached), so feature losses can back-propagate through them. A module
called several times in one forward keeps its last tensor (zoo stage modules run once).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

INPUT_SUFFIX = ":in"


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

    def _hook(self, name: str, take_input: bool) -> Any:
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
    pooled embedding [B, D]) using the model's ``stage_names`` and ``classifier_name``."""
    stages: tuple[str, ...] = model.stage_names  # type: ignore[assignment]
    embed_name = f"{model.classifier_name}{INPUT_SUFFIX}"
    with FeatureExtractor(model, [*stages, embed_name]) as fx:
        logits = model(x)
    return logits, [fx.features[n] for n in stages], fx.features[embed_name]
