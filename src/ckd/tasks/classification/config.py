"""The classification task's config sections (``task: classification``, the default): the
dataset (``data``, with the options its dataset declares) and the classifier models
(``student``, ``teacher``); ``method``, ``optim`` and ``run`` are the shared sections of
:mod:`ckd.config`. Each section checks its own values; :class:`ClassificationConfig` checks
what spans its sections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ckd.config import MAX_SEED, BaseConfig, DataSection
from ckd.data import DATASETS, DatasetOptions
from ckd.errors import ConfigError, require, show
from ckd.methods import METHODS
from ckd.models import MODELS
from ckd.paths import input_file_problem
from ckd.schema import build, key_text, to_dict


@dataclass
class DataConfig(DataSection):
    """``data``: a dataset of :mod:`ckd.data` by name, the keys every dataset takes, and (flat
    beside them in the YAML) the options its dataset declares (``options``: e.g. a folder's
    ``image_size``; :class:`~ckd.data.DatasetOptions`)."""

    name: str = "cifar100"  # a name from ckd.data.DATASETS
    root: str | None = None  # dataset folder; Fashion-MNIST is also looked up elsewhere
    batch_size: int = 64  # the global batch of one optimisation step, over all processes
    test_batch_size: int = 256  # per process
    num_workers: int = 2
    train_subset: int | None = None  # class-balanced subset of the training set (None: all)
    test_subset: int | None = None
    augment: bool = True
    download: bool = False  # let torchvision download when online (never needed offline)
    # Check the files against their published checksums (CIFAR: torchvision's md5 list). Only
    # data generated as a stand-in (tests, `ckd bench speed`) sets it false; nothing inside a
    # data folder can turn the check off, and CIFAR's pickles are read without running code
    # either way (ckd.data.safe_pickle).
    verify: bool = True
    # standard: per-image transforms in DataLoader workers. fast: the training set held once as
    # uint8 on the run's device, crop/flip/normalise applied to whole batches there, each
    # (epoch, sample)'s augmentation drawn from (aug_seed, epoch) so it can be replayed
    # (ckd.data.fast); needed by run.teacher_cache.
    loader: Literal["standard", "fast"] = "standard"
    aug_seed: int | None = None  # fast loader: seed of the augmentation draws (null: run.seed)
    # the dataset's own options (flat in the YAML), as its DatasetSpec.Options declares them
    options: DatasetOptions = field(default_factory=DatasetOptions)

    @classmethod
    def from_dict(cls, data: Any, where: str = "data") -> DataConfig:
        """The section from its mapping: the common keys by this schema, the others by the
        options class of the dataset ``name`` names (an unknown key names the keys allowed)."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {show(data)}")
        name = data.get("name", cls.name)
        if not isinstance(name, str) or name not in DATASETS:
            known = ", ".join(DATASETS)
            raise ConfigError(f"{where}.name: unknown dataset {show(name)}; known: {known}")
        common = {f.name for f in dataclasses.fields(cls) if f.name != "options"}
        options_cls = DATASETS.get(name).Options
        own = {f.name for f in dataclasses.fields(options_cls)}
        for key in data:
            if key in common or key in own:
                continue
            others = [n for n, spec in DATASETS.items() if key in _option_names(spec.Options)]
            if others:
                raise ConfigError(
                    f"{where}.{key} is for {where}.name={others[0]}; {name} "
                    f"{_takes(name, sorted(own))}: remove it"
                )
            allowed = [f.name for f in dataclasses.fields(cls) if f.name != "options"]
            allowed += [f.name for f in dataclasses.fields(options_cls)]
            raise ConfigError(f"unknown key {where}.{key_text(key)}; allowed: {', '.join(allowed)}")
        options = build(options_cls, {k: v for k, v in data.items() if k in own}, where)
        return build(
            cls, {k: v for k, v in data.items() if k in common}, where, given={"options": options}
        )

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {**{k: v for k, v in d.items() if k != "options"}, **to_dict(self.options)}

    def validate(self) -> None:
        super().validate()
        spec = DATASETS.get(self.name)
        if spec.info is None:
            require(
                self.root is not None,
                f"data.root: data.name={self.name} needs the folder of your images "
                "(ROOT/train/<class>/..., ROOT/val/<class>/...)",
            )
        self.options.validate()
        for key in ("train_subset", "test_subset"):
            v = getattr(self, key)
            require(v is None or v >= 1, f"data.{key} must be >= 1 or null; got {show(v)}")
        require(
            self.aug_seed is None or 0 <= self.aug_seed <= MAX_SEED,
            f"data.aug_seed must be in [0, 2**63 - 1] or null; got {show(self.aug_seed)}",
        )
        require(
            self.aug_seed is None or self.loader == "fast",
            f"data.aug_seed is for data.loader=fast; got data.loader={self.loader!r}",
        )

    def channels(self) -> int | None:
        """The input channels, when known without reading the data (a fixed dataset's, or
        what the options fix)."""
        info = DATASETS.get(self.name).info
        return info.in_channels if info is not None else self.options.channels_known()


def _option_names(options_cls: type[DatasetOptions]) -> set[str]:
    return {f.name for f in dataclasses.fields(options_cls)}


def _takes(name: str, own: list[str]) -> str:
    info = DATASETS.get(name).info
    facts = (
        f"has {info.in_channels}x{info.image_size}x{info.image_size} images and its own split "
        "and normalisation"
        if info is not None
        else ""
    )
    return f"takes {', '.join(own)}" if own else facts or "takes no options of its own"


@dataclass
class ModelConfig:
    """``student`` / ``teacher``: a classifier of the zoo, torchvision or timm."""

    name: str  # a name from ckd.models.MODELS, or tv:<torchvision model>, timm:<timm model>
    checkpoint: str | None = None  # weights to load (teacher: required)
    # The model's own input normalisation (per channel, on [0, 1] pixels), when it differs from
    # the dataset's: the model then sees the dataset's images re-normalised with these. Both or
    # neither; null: the dataset's normalisation.
    input_mean: list[float] | None = None
    input_std: list[float] | None = None
    # tv:<name> / timm:<name>: the published (ImageNet) weights, read from the local cache
    # (torch hub's, Hugging Face's; ckd.models.pretrained), never downloaded by a run
    # (`ckd fetch-weights NAME` does that). Another class count gets a new head.
    pretrained: bool = False

    def validate(self, role: str, channels: int | None = None) -> None:
        """The section's value checks; ``channels``: the data's input channels, when known."""
        if self.name not in MODELS:
            MODELS.get(self.name)  # raises the one-line error naming the known models
        if self.pretrained:
            require(
                self.name.startswith(("tv:", "timm:")),
                f"{role}.pretrained is for torchvision and timm models (tv:<name>, "
                f"timm:<name>); got {show(self.name)}",
            )
            require(
                self.checkpoint is None, f"{role}: give checkpoint or pretrained=true, not both"
            )
        mean, std = self.input_mean, self.input_std
        require(
            (mean is None) == (std is None),
            f"{role}.input_mean and {role}.input_std go together; got only "
            f"{'input_mean' if std is None else 'input_std'}",
        )
        if mean is not None and std is not None:
            for key, v in (("input_mean", mean), ("input_std", std)):
                require(
                    channels is None or len(v) == channels,
                    f"{role}.{key} needs {channels} value(s), one per input channel; got {show(v)}",
                )
            require(all(x > 0 for x in std), f"{role}.input_std must be > 0; got {show(std)}")


@dataclass(kw_only=True)
class ClassificationConfig(BaseConfig):
    """A classification run: a dataset of labelled images, classifier models."""

    task: Literal["classification"] = "classification"
    data: DataConfig
    student: ModelConfig
    teacher: ModelConfig | None = None

    @classmethod
    def build_sections(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {"data": DataConfig.from_dict(data["data"])} if "data" in data else {}

    def paths(self) -> dict[str, str | None]:
        models = {"student": self.student, "teacher": self.teacher}
        return {
            **super().paths(),
            "data.root": self.data.root,
            **{f"{k}.checkpoint": m.checkpoint for k, m in models.items() if m is not None},
        }

    def resolve(self) -> None:
        if self.data.loader == "fast" and self.data.aug_seed is None:
            self.data.aug_seed = self.run.seed  # the augmentation's seed defaults to the run's

    def validate(self) -> None:
        channels = self.data.channels()
        for role, model in (("student", self.student), ("teacher", self.teacher)):
            if model is not None:
                try:
                    model.validate(role, channels)
                except KeyError as e:  # an unknown model: the registry's line, with the role
                    raise ConfigError(f"{role}.name: {e}") from None
        if self.run.teacher_cache is not None:
            require(
                self.data.loader == "fast",
                "run.teacher_cache needs data.loader=fast (the standard loader's augmentation "
                f"cannot be replayed); got data.loader={self.data.loader!r}",
            )
        if self.run.compile is not False:
            readers = [m.name for m in self.method.parts() if METHODS.get(m.name).needs_features]
            if readers:
                raise ConfigError(
                    f"run.compile: method {readers[0]!r} reads features through hooks, which "
                    "torch.compile would retrace every step; set run.compile=false"
                )

    def check_data(self) -> None:
        locate = DATASETS.get(self.data.name).locate
        if locate is not None and not self.data.download:
            locate(self.data.root)

    def check_files(self) -> None:
        for role, m in (("student", self.student), ("teacher", self.teacher)):
            if m is not None and m.checkpoint is not None:
                problem = input_file_problem(f"{role}.checkpoint", m.checkpoint)
                require(problem is None, problem or "")
