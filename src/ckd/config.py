"""The run configuration: a validated schema loaded from YAML plus ``key=value`` overrides.

Everything is checked before anything runs or is written: unknown keys, wrong types, unknown
model/method/dataset names, missing files and out-of-range numbers each raise a
:class:`~ckd.errors.ConfigError` whose one-line message names the bad value and what is allowed.

A config file may start with ``_base_: other.yaml`` (relative to the file); its mapping is then
merged over the base's, key by key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ckd.errors import ConfigError
from ckd.methods import METHODS, MethodOptions
from ckd.registry import Registry
from ckd.schema import build, to_dict

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""The configs shipped with the package (``configs/`` at the repository root links here)."""


@dataclass
class DataConfig:
    name: str = "cifar100"  # a name from ckd.data.DATASETS
    root: str | None = None  # dataset folder; Fashion-MNIST is also looked up elsewhere
    batch_size: int = 64  # the global batch of one optimisation step, over all processes
    test_batch_size: int = 256  # per process
    num_workers: int = 2
    train_subset: int | None = None  # class-balanced subset of the training set (None: all)
    test_subset: int | None = None
    augment: bool = True
    download: bool = False  # let torchvision download when online (never needed offline)
    # standard: per-image transforms in DataLoader workers. fast: the training set held once as
    # uint8 on the run's device, crop/flip/normalise applied to whole batches there, each
    # (epoch, sample)'s augmentation drawn from (aug_seed, epoch) so it can be replayed
    # (ckd.data.fast); needed by run.teacher_cache.
    loader: Literal["standard", "fast"] = "standard"
    aug_seed: int | None = None  # fast loader: seed of the augmentation draws (null: run.seed)


@dataclass
class ModelConfig:
    name: str  # a name from ckd.models.MODELS, or tv:<torchvision model>, timm:<timm model>
    checkpoint: str | None = None  # weights to load (teacher: required)
    # The model's own input normalisation (per channel, on [0, 1] pixels), when it differs from
    # the dataset's: the model then sees the dataset's images re-normalised with these. Both or
    # neither; null: the dataset's normalisation.
    input_mean: list[float] | None = None
    input_std: list[float] | None = None
    # tv:<name> only: torchvision's published ImageNet weights, downloaded (online) into
    # torch's cache. Offline, download the .pth elsewhere and give it as checkpoint instead.
    pretrained: bool = False


@dataclass
class OptimConfig:
    epochs: int = 240
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])  # step: epochs
    gamma: float = 0.1  # step: factor at each milestone
    warmup_epochs: float = 0.0  # linear warm-up from 0, per iteration
    min_lr: float = 0.0  # cosine: final learning rate
    # When the learning rate changes: every optimisation step (step), or once per epoch, held
    # at its value for the epoch's first step (epoch: what the reference code does, whose
    # CosineAnnealingLR steps once per epoch; the shipped reference recipes set it). The step
    # schedule changes only at epoch boundaries either way.
    lr_update: Literal["step", "epoch"] = "step"
    # Gradient accumulation: each optimisation step sums the gradients of accum_steps
    # micro-batches per process (data.batch_size, the global batch, is cut into processes x
    # accum_steps equal micro-batches), so a recipe's global batch fits on fewer GPUs.
    accum_steps: int = 1
    # Linear learning-rate scaling (Goyal et al., 2017): when set, lr and min_lr are the rates
    # for a global batch of this size and are multiplied by data.batch_size / lr_reference_batch.
    lr_reference_batch: int | None = None


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, none on CPU
    out_dir: str | None = None  # default: runs/<config name>/seed<seed>
    tensorboard: bool = True
    progress: bool = True  # progress bars (only on a terminal)
    # Models and batches in channels_last memory format. auto: on (faster on CUDA and on the
    # CPU with oneDNN, see benchmarks/README.md).
    channels_last: bool | Literal["auto"] = "auto"
    # torch.compile: true = student and teacher; teacher = the frozen teacher alone (compiled for
    # inference with freezing: BN folded into the convolutions). Costs a minute or more up front.
    compile: bool | Literal["teacher"] = False
    # Folder of the teacher-output cache (ckd.engine.cache): the teacher's logits of every
    # (epoch, sample) of the fast loader, built on first use or by `ckd cache build`.
    teacher_cache: str | None = None
    # Under torchrun (several processes): the process-group backend. auto: NCCL with CUDA,
    # gloo on the CPU.
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    # SyncBatchNorm for the student under torchrun (CUDA only): BN statistics over the global
    # micro-batch instead of each process's share.
    sync_bn: bool = False


@dataclass
class MethodConfig:
    """``method: {name: ckd, <options of ckd>..., also: [{name: ..., <options>...}]}``.

    ``also`` runs further methods with the first one (e.g. a feature loss beside a logit loss):
    their loss terms are summed; a term name several give (``ce``) is taken from the first.
    """

    name: str
    options: MethodOptions
    also: list[MethodConfig] = field(default_factory=list)

    def parts(self) -> list[MethodConfig]:
        return [self, *self.also]

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, **to_dict(self.options)}
        if self.also:
            d["also"] = [m.to_dict() for m in self.also]
        return d


@dataclass
class Config:
    data: DataConfig
    student: ModelConfig
    method: MethodConfig
    teacher: ModelConfig | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    description: str = ""
    source: str = ""  # the config file it came from (set by load_config)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping that :func:`config_from_dict` turns back into the same config."""
        d = to_dict(self)
        d["method"] = self.method.to_dict()
        return d

    def default_out_dir(self) -> Path:
        return Path("runs") / config_name(self.source or "run") / f"seed{self.run.seed}"


def config_name(path: str | Path) -> str:
    """``configs/cifar100/ckd/x.yaml`` -> ``cifar100/ckd/x``; other paths -> their stem."""
    p = Path(path).resolve()
    for root in (CONFIG_DIR, Path.cwd() / "configs"):
        try:
            return str(p.relative_to(root.resolve()).with_suffix(""))
        except ValueError:
            continue
    return p.stem


def resolve_config_path(name: str | Path) -> Path:
    """A path to a YAML file, or a shipped config's name (``fashion_mnist/ckd``)."""
    p = Path(name)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / p, CONFIG_DIR / p.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"config {str(name)!r} not found: not a file, nor a shipped config (see `ckd list configs`)"
    )


DETECTION_DIR = "detection"
"""The folder of ``CONFIG_DIR`` holding the detection configs (``task: detection``)."""


def shipped_configs(task: Literal["classification", "detection"] = "classification") -> list[str]:
    """Names of the shipped configs of one task (files whose name starts with ``_`` are bases,
    not listed); the detection ones live under ``detection/``."""
    files = [p for p in CONFIG_DIR.rglob("*.yaml") if not p.name.startswith("_")]
    names = sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in files)
    detection = [n for n in names if n.split("/", 1)[0] == DETECTION_DIR]
    return detection if task == "detection" else [n for n in names if n not in detection]


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle")
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{at}: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return data
    return _merge(read_yaml((path.parent / base).resolve(), (*seen, path)), data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_OVERRIDE = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)=(.*)$", re.S)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings; values are parsed as YAML (``1e-3``, ``[1, 2]``, ``null``)."""
    data = _merge({}, data)
    for item in overrides:
        m = _OVERRIDE.match(item)
        if not m:
            raise ConfigError(f"bad override {item!r}; expected key.path=value")
        keys, raw = m.group(1).split("."), m.group(2)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return data


def method_from_dict(
    data: Any, where: str = "method", nested: bool = True, registry: Registry | None = None
) -> MethodConfig:
    """A validated :class:`MethodConfig` from ``{name: ..., options..., also: [...]}``; the
    names come from ``registry`` (default: the classification methods)."""
    methods = METHODS if registry is None else registry
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError(f"{where}: expected a mapping with a name, one of {methods.names()}")
    data = dict(data)
    name = data.pop("name")
    if name not in methods:
        raise ConfigError(f"{where}.name: unknown method {name!r}; known: {', '.join(methods)}")
    also = data.pop("also", []) if nested else []
    if not isinstance(also, list):
        raise ConfigError(f"{where}.also: expected a list of methods, got {also!r}")
    options = build(methods.get(name).Options, data, where)
    parts = [
        method_from_dict(m, f"{where}.also[{i}]", nested=False, registry=methods)
        for i, m in enumerate(also)
    ]
    return MethodConfig(name, options, parts)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Typed, fully validated config from a plain mapping."""
    data = dict(data)
    method = method_from_dict(data.pop("method", None))
    cfg = build(Config, data, "", given={"method": method})
    validate(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, merge, override and validate a config file (or a shipped config's name)."""
    p = resolve_config_path(path)
    data = apply_overrides(read_yaml(p.resolve()), overrides or [])
    data.pop("source", None)
    cfg = config_from_dict(data)
    cfg.source = str(p)
    return cfg


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_method_and_loading(method: MethodConfig, d: Any, subsets: tuple[str, ...]) -> None:
    """The checks classification and detection configs share: every method part's options, and
    the data section's batch sizes, workers and subset sizes (``subsets``: their keys)."""
    for part in method.parts():
        try:
            part.options.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
    for key in ("batch_size", "test_batch_size"):
        _require(getattr(d, key) >= 1, f"data.{key} must be >= 1; got {getattr(d, key)}")
    _require(d.num_workers >= 0, f"data.num_workers must be >= 0; got {d.num_workers}")
    for key in subsets:
        v = getattr(d, key)
        _require(v is None or v >= 1, f"data.{key} must be >= 1 or null; got {v}")


def validate(cfg: Config) -> None:
    """Semantic checks beyond types: names, files and ranges."""
    from ckd.data import DATASETS
    from ckd.models import MODELS

    d, o, r = cfg.data, cfg.optim, cfg.run
    _require(
        d.name in DATASETS, f"data.name: unknown dataset {d.name!r}; known: {', '.join(DATASETS)}"
    )
    for role in ("student", "teacher"):
        m = getattr(cfg, role)
        if m is None:
            continue
        _require(
            m.name in MODELS,
            f"{role}.name: unknown model {m.name!r}; known: {', '.join(MODELS)}",
        )
        if m.checkpoint is not None:
            _require(
                Path(m.checkpoint).is_file(),
                f"{role}.checkpoint: file {m.checkpoint!r} does not exist",
            )
        if m.pretrained:
            _require(
                m.name.startswith("tv:"),
                f"{role}.pretrained is for torchvision models (tv:<name>); got {m.name!r}",
            )
            _require(
                m.checkpoint is None,
                f"{role}: give checkpoint or pretrained=true, not both",
            )
        _require(
            (m.input_mean is None) == (m.input_std is None),
            f"{role}.input_mean and {role}.input_std go together; got only "
            f"{'input_mean' if m.input_std is None else 'input_std'}",
        )
        if m.input_mean is not None and m.input_std is not None:
            channels = DATASETS.get(d.name).info.in_channels
            for key in ("input_mean", "input_std"):
                v = getattr(m, key)
                _require(
                    len(v) == channels,
                    f"{role}.{key} needs {channels} value(s), one per channel of {d.name}; got {v}",
                )
            _require(
                all(x > 0 for x in m.input_std),
                f"{role}.input_std must be > 0; got {m.input_std}",
            )
    needing = [m.name for m in cfg.method.parts() if METHODS.get(m.name).needs_teacher]
    if needing:
        _require(
            cfg.teacher is not None
            and (cfg.teacher.checkpoint is not None or cfg.teacher.pretrained),
            f"method {needing[0]!r} needs a teacher: set teacher.name and "
            "teacher.checkpoint (a file trained with method vanilla, or a reference checkpoint)",
        )
    else:
        _require(
            cfg.teacher is None,
            f"method {cfg.method.name!r} uses no teacher; remove the teacher section",
        )
    validate_method_and_loading(cfg.method, d, ("train_subset", "test_subset"))
    _require(o.epochs >= 1, f"optim.epochs must be >= 1; got {o.epochs}")
    _require(o.lr > 0, f"optim.lr must be > 0; got {o.lr}")
    _require(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1); got {o.momentum}")
    _require(o.weight_decay >= 0, f"optim.weight_decay must be >= 0; got {o.weight_decay}")
    _require(0 < o.gamma <= 1, f"optim.gamma must be in (0, 1]; got {o.gamma}")
    _require(
        0 <= o.warmup_epochs < o.epochs,
        f"optim.warmup_epochs must be in [0, epochs={o.epochs}); got {o.warmup_epochs}",
    )
    _require(0 <= o.min_lr <= o.lr, f"optim.min_lr must be in [0, lr]; got {o.min_lr}")
    _require(o.accum_steps >= 1, f"optim.accum_steps must be >= 1; got {o.accum_steps}")
    _require(
        d.batch_size % o.accum_steps == 0,
        f"data.batch_size={d.batch_size} (the global batch) must be a multiple of "
        f"optim.accum_steps={o.accum_steps}",
    )
    _require(
        o.lr_reference_batch is None or o.lr_reference_batch >= 1,
        f"optim.lr_reference_batch must be >= 1 or null; got {o.lr_reference_batch}",
    )
    _require(not o.nesterov or o.momentum > 0, "optim.nesterov needs optim.momentum > 0")
    if o.schedule == "step":  # milestones past the last epoch are allowed (they never fire)
        _require(
            all(m > 0 for m in o.milestones) and o.milestones == sorted(set(o.milestones)),
            f"optim.milestones must be increasing positive epochs; got {o.milestones}",
        )
    _require(
        re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", r.device) is not None,
        f"run.device: expected auto, cpu, cuda, cuda:N or mps; got {r.device!r}",
    )
    _require(
        d.aug_seed is None or d.aug_seed >= 0,
        f"data.aug_seed must be >= 0 or null; got {d.aug_seed}",
    )
    _require(
        d.aug_seed is None or d.loader == "fast",
        f"data.aug_seed is for data.loader=fast; got data.loader={d.loader!r}",
    )
    if r.teacher_cache is not None:
        _require(
            r.teacher_cache.strip() != "", "run.teacher_cache must be a folder path or null; got ''"
        )
        _require(
            d.loader == "fast",
            f"run.teacher_cache needs data.loader=fast (the standard loader's augmentation "
            f"cannot be replayed); got data.loader={d.loader!r}",
        )
        _require(
            cfg.teacher is not None,
            f"run.teacher_cache: method {cfg.method.name!r} uses no teacher; set it to null",
        )
    if r.compile is not False:
        feature_methods = [m.name for m in cfg.method.parts() if METHODS.get(m.name).needs_features]
        if feature_methods:
            raise ConfigError(
                f"run.compile: method {feature_methods[0]!r} reads features through hooks, which "
                "torch.compile would retrace every step; set run.compile=false"
            )
