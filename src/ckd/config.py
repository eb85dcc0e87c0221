"""The run configuration: the shared schema, loaded from YAML plus ``key=value`` overrides.

One schema for every task: ``task:`` (``classification`` by default, or ``detection``) selects
the task's config class (registered in :data:`TASK_CONFIGS` by the task packages of
:mod:`ckd.tasks`), which holds the task's ``data`` and model sections (``student``,
``teacher``) and its other sections (a detector's ``input`` and ``detector``); ``method``,
``optim`` and ``run`` are the shared sections defined here. A config is read once
(:func:`load_config`), each default is defined once (a field's default, or a task's
``SECTION_DEFAULTS`` / a method's ``TASK_DEFAULTS`` where a task differs), derived values are
resolved once while building, and then checked: values first (:func:`validate`: each section
checks itself, then what spans sections), then the files they name (:func:`check_files`).
Every bad input raises a :class:`~ckd.errors.ConfigError` whose one-line message names the bad
value and what is allowed, before anything runs or is written.

A config file may start with ``_base_: other.yaml`` (relative to the file); its mapping is then
merged over the base's, key by key (:mod:`ckd.config_files` reads files and overrides).

Why over 450 lines: the shared sections (optim, run, method) document each of their ~40 keys
beside its default and check their own values next to them, and loading needs all of them;
the task sections live in their task packages, files and overrides in ckd.config_files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from ckd.config_files import _merge, apply_overrides, config_name, read_yaml, resolve_config_path
from ckd.errors import ConfigError, require, show
from ckd.methods import METHODS, MethodOptions
from ckd.registry import Registry
from ckd.schema import build, to_dict

#: Largest seed: torch and the per-epoch seeds take 63-bit integers.
MAX_SEED = 2**63 - 1
#: Longest path, and longest file or folder name, Linux accepts (PATH_MAX, NAME_MAX), in bytes.
PATH_MAX, NAME_MAX = 4095, 255


@dataclass
class DataSection:
    """What every task's ``data`` section holds (each task's section adds its own keys)."""

    name: str
    root: str | None = None
    batch_size: int = 64  # the global batch of one optimisation step, over all processes
    test_batch_size: int = 256  # per process
    num_workers: int = 2

    def validate(self) -> None:
        """The section's value checks (one-line ConfigError naming the bad value)."""
        for key in ("batch_size", "test_batch_size"):
            v = getattr(self, key)
            require(v >= 1, f"data.{key} must be >= 1; got {show(v)}")
        require(
            self.num_workers >= 0, f"data.num_workers must be >= 0; got {show(self.num_workers)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping, as the YAML gives it."""
        return to_dict(self)


@dataclass
class OptimConfig:
    # The schedule's length in epochs, or in iterations (optimisation steps) when ``iters`` is
    # set (then ``epochs`` is null). Milestones, warm-up and run.{eval,log,checkpoint}_every
    # count in that unit.
    epochs: int | None = 240
    iters: int | None = None
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])  # step: in the unit
    gamma: float = 0.1  # step: factor at each milestone
    warmup_epochs: float = 0.0  # linear warm-up from 0, per step, over this many epochs
    warmup_iters: int = 0  # ... or this many iterations (one of the two)
    min_lr: float = 0.0  # cosine: final learning rate
    # When the learning rate changes: every optimisation step (step), or once per epoch, held
    # at its value for the epoch's first step (epoch: what the reference code does, whose
    # CosineAnnealingLR steps once per epoch; the shipped reference recipes set it). The step
    # schedule changes only at epoch boundaries either way; an iteration schedule (iters) has
    # no epochs to hold the rate over and updates it every step.
    lr_update: Literal["step", "epoch"] = "step"
    # Gradient accumulation: each optimisation step sums the gradients of accum_steps
    # micro-batches per process (data.batch_size, the global batch, is cut into processes x
    # accum_steps equal micro-batches), so a recipe's global batch fits on fewer GPUs.
    accum_steps: int = 1
    # Linear learning-rate scaling (Goyal et al., 2017): when set, lr and min_lr are the rates
    # for a global batch of this size and are multiplied by data.batch_size / lr_reference_batch.
    lr_reference_batch: int | None = None

    def validate(self) -> None:
        """The section's value checks (one-line ConfigError naming the bad value)."""
        require(
            (self.epochs is None) != (self.iters is None),
            "optim: give epochs or iters (one of the two); "
            f"got epochs={show(self.epochs)}, iters={show(self.iters)}",
        )
        unit = "epochs" if self.iters is None else "iters"
        require(self.length >= 1, f"optim.{unit} must be >= 1; got {show(self.length)}")
        require(self.lr > 0, f"optim.lr must be > 0; got {show(self.lr)}")
        require(
            0 <= self.momentum < 1, f"optim.momentum must be in [0, 1); got {show(self.momentum)}"
        )
        require(
            self.weight_decay >= 0,
            f"optim.weight_decay must be >= 0; got {show(self.weight_decay)}",
        )
        require(0 < self.gamma <= 1, f"optim.gamma must be in (0, 1]; got {show(self.gamma)}")
        for key in ("warmup_epochs", "warmup_iters"):
            value = getattr(self, key)
            require(value >= 0, f"optim.{key} must be >= 0; got {show(value)}")
        require(
            not (self.warmup_epochs and self.warmup_iters),
            "optim: give warmup_epochs or warmup_iters, not both",
        )
        key = "warmup_epochs" if self.iters is None else "warmup_iters"
        value = getattr(self, key)
        require(
            value < self.length,
            f"optim.{key} must be in [0, {unit}={self.length}); got {show(value)}",
        )
        require(
            0 <= self.min_lr <= self.lr, f"optim.min_lr must be in [0, lr]; got {show(self.min_lr)}"
        )
        require(
            self.accum_steps >= 1, f"optim.accum_steps must be >= 1; got {show(self.accum_steps)}"
        )
        require(
            self.lr_reference_batch is None or self.lr_reference_batch >= 1,
            f"optim.lr_reference_batch must be >= 1 or null; got {show(self.lr_reference_batch)}",
        )
        require(not self.nesterov or self.momentum > 0, "optim.nesterov needs optim.momentum > 0")
        if self.schedule == "step":  # milestones past the end are allowed (they never fire)
            m = self.milestones
            require(
                all(x > 0 for x in m) and m == sorted(set(m)),
                f"optim.milestones must be increasing positive {self.unit}s; got {show(m)}",
            )

    @property
    def unit(self) -> str:
        """``epoch`` or ``iteration``: what the schedule's counts count."""
        return "epoch" if self.iters is None else "iteration"

    @property
    def length(self) -> int:
        """The schedule's length in its unit."""
        length = self.iters if self.iters is not None else self.epochs
        return length if length is not None else 0


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    # auto: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX), none elsewhere
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    out_dir: str | None = None  # default: runs/<config name>/seed<seed>
    tensorboard: bool = True
    progress: bool = True  # progress bars on a terminal; elsewhere a line every progress_seconds
    # Without a terminal (a log file, a pipe): seconds between progress lines within the metric
    # rows (0: none).
    progress_seconds: float = 60.0
    # Models and batches in channels_last memory format. auto: on (faster on CUDA and on the
    # CPU with oneDNN, see benchmarks/README.md).
    channels_last: bool | Literal["auto"] = "auto"
    # torch.compile: true = student and teacher; teacher = the frozen teacher alone (compiled for
    # inference with freezing: BN folded into the convolutions); reduce-overhead = both, with
    # torch.compile's own CUDA graphs (CUDA only). Costs a minute or more up front.
    compile: bool | Literal["teacher", "reduce-overhead"] = False
    # The whole training step (teacher and student forward, loss, backward, SGD step) captured
    # once as a CUDA graph and replayed (ckd.engine.graphs). true: refused in one line where it
    # cannot work (not CUDA, torchrun, fp16, optim.accum_steps > 1, detection, a method that
    # syncs with the host); auto: on where it can work, off elsewhere.
    cuda_graphs: bool | Literal["auto"] = False
    # Folder of the teacher-output cache (ckd.engine.cache): the teacher's logits of every
    # (epoch, sample) of the fast loader, built on first use or by `ckd cache build`.
    teacher_cache: str | None = None
    # Under torchrun (several processes): the process-group backend. auto: NCCL with CUDA,
    # gloo on the CPU.
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    # SyncBatchNorm for the student under torchrun (CUDA only): BN statistics over the global
    # micro-batch instead of each process's share.
    sync_bn: bool = False
    eval_teacher: bool = True  # evaluate the teacher once before training
    # In the schedule's unit (optim.epochs or optim.iters): evaluate (and keep best.pt) every N
    # (null: at the end of every epoch); write last.pt every N (null: at every evaluation); log
    # a row of training losses every N (null: at every evaluation).
    eval_every: int | None = None
    checkpoint_every: int | None = None
    log_every: int | None = None

    def validate(self) -> None:
        """The section's value checks (one-line ConfigError naming the bad value)."""
        require(
            re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device) is not None,
            f"run.device: expected auto, cpu, cuda, cuda:N or mps; got {show(self.device)}",
        )
        require(
            self.progress_seconds >= 0,
            "run.progress_seconds must be >= 0 (0: no progress lines); "
            f"got {show(self.progress_seconds)}",
        )
        for key in ("eval_every", "checkpoint_every", "log_every"):
            v = getattr(self, key)
            require(v is None or v >= 1, f"run.{key} must be >= 1 or null; got {show(v)}")
        require(
            0 <= self.seed <= MAX_SEED, f"run.seed must be in [0, 2**63 - 1]; got {show(self.seed)}"
        )
        if self.teacher_cache is not None:
            require(
                self.teacher_cache.strip() != "",
                "run.teacher_cache must be a folder path or null; got ''",
            )


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

    def validate(self) -> None:
        """Each method's own option checks (one-line ConfigError naming the bad value)."""
        for part in self.parts():
            try:
                part.options.validate()
            except ValueError as e:
                raise ConfigError(str(e)) from None

    def uses_teacher(self) -> list[str]:
        """The names of the methods that read a teacher."""
        return [m.name for m in self.parts() if METHODS.get(m.name).needs_teacher]

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, **to_dict(self.options)}
        if self.also:
            d["also"] = [m.to_dict() for m in self.also]
        return d


@dataclass(kw_only=True)
class BaseConfig:
    """What every task's config holds; a task's config adds its data and model sections."""

    #: Defaults of shared sections that differ for this task: ``{section: {key: value}}``,
    #: merged beneath the config's own values.
    SECTION_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Section keys in the order they are written (``config.yaml``).
    ORDER: ClassVar[tuple[str, ...]] = ("task", "description", "data", "student", "teacher")

    task: str
    data: DataSection
    method: MethodConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    description: str = ""
    source: str = ""  # the config file it came from (set by load_config)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping that :func:`config_from_dict` turns back into the same config."""
        d = to_dict(self)
        d["method"] = self.method.to_dict()
        d["data"] = self.data.to_dict()
        first = [k for k in self.ORDER if k in d]
        return {k: d[k] for k in [*first, *(k for k in d if k not in first)]}

    @classmethod
    def build_sections(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Sections this task builds itself from the raw mapping (e.g. a data section whose
        dataset declares options of its own), by key; the others are built from the schema."""
        return {}

    def default_out_dir(self) -> Path:
        return Path("runs") / config_name(self.source or "run") / f"seed{self.run.seed}"

    def paths(self) -> dict[str, str | None]:
        """The paths the config names, by key (checked for length before anything runs)."""
        return {"run.out_dir": self.run.out_dir, "run.teacher_cache": self.run.teacher_cache}

    def resolve(self) -> None:
        """Settle values derived from others (once, while building)."""

    def teacher_section(self) -> object | None:
        """The ``teacher`` section, or None when the run has no teacher."""
        return getattr(self, "teacher", None)

    def validate(self) -> None:
        """This task's value checks (beyond the shared ones of :func:`validate`)."""

    def check_files(self) -> None:
        """This task's checks of the files its values name."""

    def check_data(self) -> None:
        """A quick look whether the dataset's files are there (run before :meth:`check_files`
        by ``ckd train``: missing data is the more basic problem than a missing teacher)."""


#: The config schema of each task, by name (``task:``): registered by the task packages
#: (:func:`ckd.engine.task.register_task`, when :mod:`ckd.tasks` is imported).
TASK_CONFIGS: Registry[type[BaseConfig]] = Registry("task")


def method_from_dict(
    data: Any, where: str = "method", nested: bool = True, task: str = "classification"
) -> MethodConfig:
    """A validated :class:`MethodConfig` from ``{name: ..., options..., also: [...]}``: the
    methods of the registry that serve ``task``, each option defaulted by the method's
    ``TASK_DEFAULTS`` for ``task`` where it has one, else by its field default."""
    known = [n for n, cls in METHODS.items() if task in cls.tasks]
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError(f"{where}: expected a mapping with a name, one of {', '.join(known)}")
    data = dict(data)
    name = data.pop("name")
    if not isinstance(name, str) or name not in known:
        bad = not isinstance(name, str) or name not in METHODS
        what = "unknown method" if bad else f"method not available for {task}:"
        raise ConfigError(f"{where}.name: {what} {show(name)}; known: {', '.join(known)}")
    also = data.pop("also", []) if nested else []
    if not isinstance(also, list):
        raise ConfigError(f"{where}.also: expected a list of methods, got {show(also)}")
    options_cls = METHODS.get(name).Options
    options = build(options_cls, {**options_cls.TASK_DEFAULTS.get(task, {}), **data}, where)
    parts = [
        method_from_dict(m, f"{where}.also[{i}]", nested=False, task=task)
        for i, m in enumerate(also)
    ]
    return MethodConfig(name, options, parts)


#: Keys a release moved, for a one-line migration error (and to read older runs' configs).
MOVED = {
    "optim.log_every": "run.log_every",
    "optim.eval_every": "run.eval_every",
    "optim.checkpoint_every": "run.checkpoint_every",
}


def _migrate(data: dict[str, Any], silently: bool) -> dict[str, Any]:
    """Move the keys of :data:`MOVED` (``silently``: a saved config of an older run), or name
    the first one found."""
    for old, new in MOVED.items():
        (s0, k0), (s1, k1) = old.split("."), new.split(".")
        section = data.get(s0)
        if isinstance(section, dict) and k0 in section:
            if not silently:
                raise ConfigError(f"{old} is now {new}; move it there")
            data = {**data, s0: {k: v for k, v in section.items() if k != k0}}
            data[s1] = {**(data.get(s1) or {}), k1: section[k0]}
    return data


def config_from_dict(data: dict[str, Any], files: bool = True, saved: bool = False) -> BaseConfig:
    """Typed, fully validated config from a plain mapping (its ``task`` picks the schema);
    ``files``: also check the files it names; ``saved``: a run's own saved config (older
    layouts accepted)."""
    data = dict(data)
    task = data.get("task", "classification")
    if task not in TASK_CONFIGS:
        known = ", ".join(TASK_CONFIGS) or "none registered: import ckd.tasks first"
        raise ConfigError(f"task: unknown task {show(task)}; known: {known}")
    cls = TASK_CONFIGS.get(task)
    if "task" not in data:  # a config of a release before `task:` (detection had its own stack)
        for other, other_cls in TASK_CONFIGS.items():
            theirs = {f.name for f in fields(other_cls)} - {f.name for f in fields(cls)}
            extra = sorted(k for k in data if k in theirs)
            if extra:
                raise ConfigError(
                    f"{extra[0]}: a {other} section in a config without `task:`; add "
                    f"`task: {other}` at its top (configs name their task since one engine "
                    "serves them all)"
                )
    data = _merge(cls.SECTION_DEFAULTS, _migrate(data, silently=saved))
    optim = data.get("optim")
    if isinstance(optim, dict) and optim.get("iters") is not None and "epochs" not in optim:
        data["optim"] = {**optim, "epochs": None}  # an iteration schedule has no epochs
    method = method_from_dict(data.pop("method", None), task=task)
    given = {"method": method, **cls.build_sections(data)}
    cfg = build(cls, {k: v for k, v in data.items() if k not in given}, "", given=given)
    cfg.resolve()
    validate(cfg)
    if files:
        check_files(cfg)
    return cfg


def load_config(
    path: str | os.PathLike[str], overrides: list[str] | None = None, files: bool = True
) -> BaseConfig:
    """Read, merge, override and validate a config file (or a shipped config's name);
    ``files``: also check the files it names."""
    p = resolve_config_path(path)
    data = apply_overrides(read_yaml(p.resolve()), overrides or [])
    data.pop("source", None)
    cfg = config_from_dict(data, files=files)
    cfg.source = str(p)
    return cfg


def load_train_config(
    config: str | os.PathLike[str] | Mapping[str, Any],
    overrides: Sequence[str] | str = (),
    files: bool = True,
) -> BaseConfig:
    """The config ``ckd train`` (and ``ckd.train``) runs: a YAML file or a shipped config's name
    with ``overrides``; a run folder: its saved ``config.yaml`` with ``run.out_dir`` set to the
    folder (to continue it with resume, or see what it ran); or a mapping of the sections,
    ``overrides`` applied over it. ``files``: also check the files it names."""
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    if isinstance(config, Mapping):
        cfg = config_from_dict(apply_overrides(dict(config), overrides), files=False)
    else:
        if Path(config).is_dir():
            if not (Path(config) / "config.yaml").is_file():
                raise ConfigError(f"{config} is a folder without config.yaml")
            overrides = [f"run.out_dir={config}", *overrides]
            config = Path(config) / "config.yaml"
        cfg = load_config(config, overrides, files=False)
    if files:
        check_files(cfg, data=True)
    return cfg


def config_yaml(cfg: BaseConfig) -> str:
    """The config as the YAML a run saves (``config.yaml``), which loads back to the same
    config; a comment says where the run would write."""
    out = cfg.run.out_dir or f"{cfg.default_out_dir()} (the default)"
    head = f"# {cfg.source or 'config'} resolved; run folder {out}\n"
    return head + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def validate(cfg: BaseConfig) -> None:
    """Every section's own checks, then what spans sections (the teacher the methods need,
    the global batch over accumulation steps, the paths), then the task's own."""
    for section in (cfg.data, cfg.method, cfg.optim, cfg.run):
        section.validate()
    needing = cfg.method.uses_teacher()
    teacher = cfg.teacher_section()
    if needing:
        require(
            teacher is not None and teacher_given(teacher),
            f"method {needing[0]!r} needs a teacher: set the teacher section and "
            "teacher.checkpoint (a file trained with method vanilla, or a reference checkpoint)",
        )
    else:
        require(
            teacher is None,
            f"method {cfg.method.name!r} uses no teacher; remove the teacher section",
        )
        require(
            cfg.run.teacher_cache is None,
            f"run.teacher_cache: method {cfg.method.name!r} uses no teacher; set it to null",
        )
    d, o = cfg.data, cfg.optim
    require(
        d.batch_size % o.accum_steps == 0,
        f"data.batch_size={d.batch_size} (the global batch) must be a multiple of "
        f"optim.accum_steps={o.accum_steps}",
    )
    for key, value in cfg.paths().items():
        check_path(key, value)
    cfg.validate()


def check_path(key: str, value: str | None) -> None:
    """A path a config names: not empty (``''`` would be the current folder), no NUL
    character, at most PATH_MAX bytes, no name over NAME_MAX (checked before anything touches
    it, so the OS never fails on it mid-run)."""
    if value is None:
        return
    require(value.strip() != "", f"{key}: an empty path (the current folder); give a path, or null")
    require("\0" not in value, f"{key}: a path cannot hold a NUL character; got {show(value)}")
    size = len(value.encode("utf-8"))
    require(size <= PATH_MAX, f"{key}: a path of {size} bytes; at most {PATH_MAX} are allowed")
    for name in Path(value).parts:
        size = len(name.encode("utf-8"))
        require(
            size <= NAME_MAX,
            f"{key}: the name {show(name)} has {size} bytes; at most {NAME_MAX} per file or folder",
        )


def teacher_given(teacher: object) -> bool:
    """Whether a teacher section says where its weights come from."""
    return any(
        getattr(teacher, key, None) not in (None, False)
        for key in ("checkpoint", "pretrained", "weights")
    )


def check_files(cfg: BaseConfig, data: bool = False) -> None:
    """The checks of the files a (value-checked) config names: ``run.out_dir`` a folder (or
    absent) whose existing parent is a folder (where the run writes, checked first: nothing is
    read for a run that could not be saved); ``data``: whether the dataset's files are there;
    then the task's (a teacher checkpoint: missing data is the more basic problem)."""
    out_dir = cfg.run.out_dir
    if out_dir is not None:
        out = Path(out_dir)
        parent = next((p for p in (out, *out.parents) if os.path.lexists(p)), None)
        require(
            parent is None or os.path.isdir(parent),
            f"run.out_dir: {show(str(parent))} is a file, not a folder",
        )
    if data:
        cfg.check_data()
    cfg.check_files()
