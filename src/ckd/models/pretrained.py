"""Published (ImageNet) weights for ``tv:`` and ``timm:`` models, read from the local caches.

``pretrained: true`` on a model never downloads: a run reads the file the library itself would
have downloaded, from the standard cache, and stops with one line naming the file(s) it looked
for when it is not there. ``ckd fetch-weights NAME`` (where online) puts it there; so does any
earlier ``torchvision.models.get_model(name, weights="DEFAULT")`` or
``timm.create_model(name, pretrained=True)``.

Where the files are looked for:

- ``tv:<arch>``: torchvision's default weights for ``arch`` (``get_model_weights(arch).DEFAULT``),
  as torch hub stores them: ``$TORCH_HOME/hub/checkpoints/<file name of the weights' URL>``
  (``TORCH_HOME`` defaults to ``$XDG_CACHE_HOME/torch``, i.e. ``~/.cache/torch``), e.g.
  ``~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth``. The file is read with
  ``torch.load(weights_only=True)`` and handed to torchvision's own builder (which knows each
  model's quirks, e.g. DenseNet's old key names).
- ``timm:<arch>[.<tag>]``: the weights of timm's pretrained config for the name (its default
  tag when none is given), first in the Hugging Face hub cache,
  ``$HF_HUB_CACHE`` or ``$HF_HOME/hub`` (default ``~/.cache/huggingface/hub``)
  ``/models--timm--<arch>.<tag>/snapshots/<revision>/model.safetensors`` (or
  ``pytorch_model.bin``), the revision ``refs/main`` names (else any); then in timm's own
  URL cache, torch hub's ``checkpoints/<file name of the config's URL>``. timm reads it
  (safetensors, or ``torch.load(weights_only=True)``) and adapts it: another ``img_size``
  resamples a ViT's position embeddings, ``in_chans=1`` sums the first convolution's kernels.

**A new head.** When the dataset has another number of classes than the weights (1000 for
ImageNet), the classifier gets a new, randomly initialised layer for the dataset's classes:
torchvision's last layer mapping to the 1000 classes (``fc`` of a ResNet, ``classifier[-1]`` of
a MobileNet or VGG, ``heads.head`` of a ViT, the 1x1 convolution of a SqueezeNet) is replaced,
and timm is given ``num_classes`` (it drops the pretrained head). With as many classes as the
weights the pretrained head is kept, class ``i`` being the weights' class ``i`` (ImageNet's
classes in the sorted order of their WordNet ids, which is also the order of the class folders
of ImageNet as an image folder).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlparse

import torch
from torch import nn

from ckd.errors import ConfigError, one_line
from ckd.models.external import (
    _NO_AUX,
    TIMM_INSTALL,
    TIMM_PREFIX,
    TV_PREFIX,
    adapt_input_channels,
    create_timm,
    external_factory,
    timm_available,
)

#: File names a timm repository on the Hugging Face hub keeps its weights under, in the order
#: timm tries them.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: Seconds a `ckd fetch-weights` connection may stall before it gives up.
FETCH_TIMEOUT_S = 30


def torch_hub_checkpoints() -> Path:
    """torch hub's download folder, ``$TORCH_HOME/hub/checkpoints`` (read at call time)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub`` (default ``~/.cache/huggingface/hub``), read at call
    time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        home = os.path.join(xdg, "huggingface")
    return Path(home).expanduser() / "hub"


def _url_file(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def _torchvision_weights(arch: str) -> Any:
    import torchvision.models as tvm

    try:
        return tvm.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise ConfigError(f"tv:{arch}: torchvision publishes no weights for it") from None


def _timm_cfg(name: str, arch: str) -> Any:
    if not timm_available():
        raise ConfigError(f"model {name!r} needs timm: {TIMM_INSTALL}")
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ConfigError(f"{name}: timm knows no published weights for {arch!r}")
    return cfg


@contextmanager
def _timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


class WeightsLocation:
    """Where a prefixed model's published weights are cached, and where they come from.

    ``places``: the cache paths looked at, in order (a ``*`` stands for any revision);
    ``found()``: the first that exists, or None.
    """

    def __init__(self, name: str) -> None:
        if not name.startswith((TV_PREFIX, TIMM_PREFIX)):
            raise ConfigError(
                f"pretrained weights are for torchvision and timm models (tv:<name>, "
                f"timm:<name>); got {name!r}"
            )
        external_factory(name)  # an unknown name: one line listing what is known
        self.name = name
        self.arch = name.split(":", 1)[1]
        self.hf_repo: str | None = None
        self.hf_files: tuple[str, ...] = ()
        self.url: str | None = None
        if name.startswith(TV_PREFIX):
            self.url = _torchvision_weights(self.arch).url
        else:
            cfg = _timm_cfg(name, self.arch)
            self.hf_repo = cfg.hf_hub_id
            self.hf_files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES
            self.url = cfg.url or None

    def _hf_folder(self) -> Path:
        assert self.hf_repo is not None
        return hf_hub_cache() / f"models--{self.hf_repo.replace('/', '--')}"

    @property
    def places(self) -> list[Path]:
        out = []
        if self.hf_repo:
            out += [self._hf_folder() / "snapshots" / "*" / f for f in self.hf_files]
        if self.url:
            out.append(torch_hub_checkpoints() / _url_file(self.url))
        return out

    def found(self) -> Path | None:
        if self.hf_repo:
            folder = self._hf_folder()
            ref = folder / "refs" / "main"
            revisions = [ref.read_text().strip()] if ref.is_file() else []
            snapshots = folder / "snapshots"
            if snapshots.is_dir():
                revisions += sorted(p.name for p in snapshots.iterdir() if p.name not in revisions)
            for revision in revisions:
                for f in self.hf_files:
                    path = snapshots / revision / f
                    if path.is_file():
                        return path
        if self.url:
            path = torch_hub_checkpoints() / _url_file(self.url)
            if path.is_file():
                return path
        return None

    def require(self) -> Path:
        """The cached file; a one-line ConfigError naming every place looked at otherwise."""
        path = self.found()
        if path is None:
            raise ConfigError(
                f"{self.name}: pretrained weights are not in the local cache; looked for "
                f"{' and '.join(map(str, self.places))}; where online, `ckd fetch-weights "
                f"{self.name}` downloads them there (runs never download)"
            )
        return path

    def fetch(self) -> Path:
        """Download the weights into the cache (a no-op when they are there); returns the file.

        Raises:
            ConfigError: the download failed (one line with the reason).
        """
        path = self.found()
        if path is not None:
            return path
        try:
            with _timeout(FETCH_TIMEOUT_S):
                if self.hf_repo:
                    return self._fetch_hf()
                assert self.url is not None
                target = torch_hub_checkpoints() / _url_file(self.url)
                target.parent.mkdir(parents=True, exist_ok=True)
                match = torch.hub.HASH_REGEX.search(target.name)
                torch.hub.download_url_to_file(
                    self.url, str(target), match.group(1) if match else None, progress=True
                )
                return target
        except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
            raise ConfigError(
                f"{self.name}: could not download the weights: {one_line(e)}"
            ) from None

    def _fetch_hf(self) -> Path:
        from huggingface_hub import hf_hub_download

        assert self.hf_repo is not None
        last: Exception | None = None
        for f in self.hf_files:
            try:
                return Path(hf_hub_download(self.hf_repo, f, cache_dir=str(hf_hub_cache())))
            except Exception as e:  # noqa: BLE001 - the next file name, or the reason below
                last = e
        raise OSError(str(last))


def _replace_head(model: nn.Module, old_classes: int, num_classes: int) -> None:
    """Replace the last ``nn.Linear`` / ``nn.Conv2d`` with ``old_classes`` outputs (the
    classifier of torchvision's models) by a fresh one with ``num_classes``."""
    found = None
    for name, m in model.named_modules():
        if (isinstance(m, nn.Linear) and m.out_features == old_classes) or (
            isinstance(m, nn.Conv2d) and m.out_channels == old_classes
        ):
            found = (name, m)
    if found is None:
        raise ConfigError(
            f"{type(model).__name__}: no layer with {old_classes} outputs to replace by a "
            f"{num_classes}-class head"
        )
    name, old = found
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding)  # type: ignore[arg-type]  # tuple[int, ...] in torch's stubs
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new.to(old.weight.device, old.weight.dtype))


def _torchvision_pretrained(arch: str, path: Path, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision.models as tvm

    weights = _torchvision_weights(arch)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a broken or foreign file: one line
        raise ConfigError(f"tv:{arch}: cannot read {path}: {one_line(e)}") from None
    kwargs = {"aux_logits": False} if arch in _NO_AUX else {}
    # torchvision's builder loads the weights (with each model's own fix-ups); it gets our
    # weights_only read of the cached file instead of torch hub's unrestricted one
    with mock.patch.object(tvm.WeightsEnum, "get_state_dict", lambda self, *a, **k: state):
        try:
            model = tvm.get_model(arch, weights=weights, **kwargs)
        except RuntimeError as e:
            raise ConfigError(f"tv:{arch}: {path} does not fit the model: {one_line(e)}") from None
    old_classes = len(weights.meta["categories"])
    if num_classes != old_classes:
        _replace_head(model, old_classes, num_classes)
    if in_channels != 3:
        adapt_input_channels(model, in_channels)
    return model


def create_pretrained(
    name: str, num_classes: int, in_channels: int = 3, image_size: int | None = None
) -> nn.Module:
    """``tv:<arch>`` or ``timm:<arch>`` with its published weights from the local cache, a new
    head for another class count, adapted to ``in_channels`` (and, for timm models that take
    it, ``image_size``).

    Raises:
        ConfigError: not a tv:/timm: model, weights not in the cache (naming the files looked
            for), or a cached file that cannot be read.
    """
    location = WeightsLocation(name)
    path = location.require()
    if name.startswith(TV_PREFIX):
        return _torchvision_pretrained(location.arch, path, num_classes, in_channels)
    try:
        return create_timm(
            location.arch,
            image_size,
            pretrained=True,
            pretrained_cfg_overlay={"file": str(path)},
            num_classes=num_classes,
            in_chans=in_channels,
        )
    except (RuntimeError, ValueError, OSError) as e:
        raise ConfigError(f"{name}: cannot load {path}: {one_line(e)}") from None
