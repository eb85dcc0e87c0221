"""A model that carries its own input normalisation.

The datasets hand out images normalised with the dataset's mean/std. A teacher trained
elsewhere may expect another normalisation (e.g. ImageNet's). :class:`Renormalize` wraps such a
model: it maps the dataset-normalised input back to ``[0, 1]`` pixels and normalises it with the
model's own statistics, in one affine step per channel::

    pixels = x * data_std + data_mean
    x_model = (pixels - model_mean) / model_std

The wrapper is invisible to checkpoints: its state dict is the inner model's, key for key (its
constants are non-persistent buffers), and it loads the inner model's state dicts, so
``load_weights`` works on it as on the bare model and a wrapped student is saved as a plain
state dict. Its ``stage_names`` / ``classifier_name`` (and any other ``*_names`` /
``*_name`` attribute naming modules) are the inner model's, prefixed with ``model.``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

INNER = "model"


class Renormalize(nn.Module):
    """``forward(x) = model(x * scale + shift)`` with per-channel ``scale = data_std /
    model_std`` and ``shift = (data_mean - model_mean) / model_std``.

    Args:
        model: the network that expects inputs normalised with ``model_mean`` / ``model_std``.
        data_mean, data_std: the normalisation the inputs come with (one value per channel).
        model_mean, model_std: the normalisation ``model`` was trained with.
    """

    def __init__(
        self,
        model: nn.Module,
        data_mean: Sequence[float],
        data_std: Sequence[float],
        model_mean: Sequence[float],
        model_std: Sequence[float],
    ) -> None:
        super().__init__()
        lengths = {len(data_mean), len(data_std), len(model_mean), len(model_std)}
        if len(lengths) != 1:
            raise ValueError(
                "mean and std need one value per input channel each; got lengths "
                f"{len(data_mean)}, {len(data_std)} (data) and {len(model_mean)}, "
                f"{len(model_std)} (model)"
            )
        if min(data_std) <= 0 or min(model_std) <= 0:
            raise ValueError(f"std must be > 0; got {list(data_std)} and {list(model_std)}")
        self.model = model
        d_mean, d_std, m_mean, m_std = (
            torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1)
            for v in (data_mean, data_std, model_mean, model_std)
        )
        self.register_buffer("scale", (d_std / m_std).float(), persistent=False)
        self.register_buffer("shift", ((d_mean - m_mean) / m_std).float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x * self.scale.to(x.dtype) + self.shift.to(x.dtype))

    def __getattr__(self, name: str) -> Any:
        """Parameters, buffers and children as usual; otherwise the inner model's feature-tap
        names (``stage_names``, ``classifier_name``, any ``*_names`` / ``*_name``), prefixed with
        ``model.`` so that they name the same modules in the wrapper."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__["_modules"].get(INNER)
            if inner is None or not name.endswith(("_names", "_name")):
                raise
            value = getattr(inner, name)
            if isinstance(value, str):
                return f"{INNER}.{value}" if value else value
            if isinstance(value, tuple | list) and all(isinstance(v, str) for v in value):
                return tuple(f"{INNER}.{v}" for v in value)
            return value

    # ----- state dict: the inner model's keys, without the wrapper's prefix -----
    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", **kwargs: Any):
        return self.model.state_dict(*args, destination=destination, prefix=prefix, **kwargs)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # torch loads children from this (local) dict after this call: nest the keys under the
        # inner model so that its modules find them
        for key in [k for k in state_dict if k.startswith(prefix)]:
            state_dict[f"{prefix}{INNER}.{key[len(prefix) :]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
