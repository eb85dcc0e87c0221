"""A classifier checkpoint's model and test set, for ``ckd eval``, ``ckd plot`` and the API:
what its saved config says (model, input normalisation, dataset and the run's own test subset),
or what the caller says for a foreign file (a reference teacher, a torchvision ``.pth``); and
a run's trained student with its dataset's facts (:func:`load_student`, for ``ckd export`` and
``ckd.load_student``), rebuilt without the data."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ckd.data import DATASETS, DatasetInfo, resolve_dataset, subset
from ckd.data.base import dataset_size
from ckd.engine.checkpoint import find_checkpoint, load_checkpoint
from ckd.engine.evaluate import evaluate
from ckd.engine.runtime import amp_dtype, pick_device
from ckd.errors import CheckpointError, ConfigError, one_line, show, show_path
from ckd.models import MODELS, load_weights
from ckd.tasks.classification.config import DataConfig, ModelConfig
from ckd.tasks.classification.models import build_model


def saved_sections(
    ckpt: dict[str, Any], path: Path, foreign: bool = False
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The checkpoint's saved ``config`` and its ``student`` and ``data`` sections, each a
    mapping (empty when absent: a foreign file). ``foreign``: the caller named the model and
    the dataset, so a ``config`` entry that is not ours is ignored.

    Raises:
        CheckpointError: one of them is there but is not a mapping, or the student's name is
            not a string (a damaged or hand-made file).
    """
    config = ckpt.get("config")
    if config is None or (foreign and not isinstance(config, dict)):
        config = {}
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{show_path(path)}: its config is a {type(config).__name__}, not a mapping; not a "
            "checkpoint of a ckd run"
        )
    sections = []
    for key in ("student", "data"):
        section = config.get(key)
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise CheckpointError(
                f"{show_path(path)}: its config.{key} is {show(section, 60)}, not a mapping; "
                "not a checkpoint of a ckd run"
            )
        for name_key in ("name",):
            if name_key in section and not isinstance(section[name_key], str):
                raise CheckpointError(
                    f"{show_path(path)}: its config.{key}.name is {show(section[name_key], 60)}, "
                    "not a name"
                )
        sections.append(dict(section))
    return config, sections[0], sections[1]


class CheckpointData(NamedTuple):
    """What :func:`checkpoint_model` finds for a checkpoint."""

    model: nn.Module
    model_name: str
    data_name: str
    test: Dataset[Any]  # the test set chosen
    test_set: str  # which one, in words
    amp: Any = None  # the run's run.amp (None: a foreign file, or no such setting saved)


def checkpoint_model(
    path: str | os.PathLike[str],
    model: str | None = None,
    data: str | None = None,
    data_root: str | None = None,
    test_subset: int | None = None,
    full_test: bool = False,
) -> CheckpointData:
    """The model of a checkpoint (or a run folder's ``last.pt``) and a test set: what its saved
    config says (model, input normalisation, dataset), or ``model`` / ``data`` for a foreign
    one (a reference teacher file, a torchvision ``.pth``).

    The test set is the run's own (its ``data.test_subset`` drawn with its ``run.seed``, as the
    run reported on), or with ``full_test`` (or for a foreign checkpoint, or another dataset
    than the run's) the whole test split, or with ``test_subset`` a class-balanced subset of
    that many images (seed 0).
    """
    if test_subset is not None and (full_test or test_subset < 1):
        raise ConfigError(
            f"--subset {test_subset}: give a number of images >= 1, or --full-test, not both"
            if full_test
            else f"--subset must be >= 1; got {test_subset}"
        )
    path = find_checkpoint(path)
    try:
        ckpt = load_checkpoint(path)
    except Exception as e:  # not a checkpoint, or one weights_only refuses to unpickle
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: cannot be read as a checkpoint: {reason[:200]}") from None
    saved, student, saved_data = saved_sections(ckpt, path, model is not None and data is not None)
    model_name = model or student.get("name")
    data_name = data or saved_data.get("name")
    if model_name is None or data_name is None:
        raise ConfigError(
            f"{path} carries no config: give --model (a zoo, tv: or timm: model) and --data "
            f"(one of {', '.join(DATASETS)})"
        )
    MODELS.get(model_name)
    same = model_name == student.get("name")
    model_cfg = ModelConfig(
        model_name,
        str(path),
        input_mean=student.get("input_mean") if same else None,
        input_std=student.get("input_std") if same else None,
    )
    root = data_root if data_root is not None else saved_data.get("root")
    # the run's own data settings (a folder's image size, channels, split), for its dataset
    same_data = data_name == saved_data.get("name")
    spec = resolve_dataset(saved_data_config(saved_data if same_data else {}, data_name, root))
    assert spec.info is not None
    net = build_model(model_cfg, spec.info)
    split = spec.build(root, False, False, False)
    test, test_set = _test_set(split, test_subset, full_test, same_data, saved)
    run_section = saved.get("run")
    run_amp = run_section.get("amp") if isinstance(run_section, dict) else None
    return CheckpointData(net, model_name, data_name, test, test_set, run_amp)


def _test_set(
    split: Dataset[Any], n: int | None, full: bool, same_data: bool, saved: dict[str, Any]
) -> tuple[Dataset[Any], str]:
    """The test set :func:`checkpoint_model` evaluates on, and its description."""
    size = dataset_size(split)
    if n is not None:
        chosen = subset(split, n)
        return chosen, f"a subset, {dataset_size(chosen)} of {size} images, seed 0"
    run_subset = (saved.get("data") or {}).get("test_subset")
    if full or not same_data or run_subset is None or run_subset >= size:
        return split, f"the whole split, {size} images"
    run = saved.get("run")
    seed = run.get("seed", 0) if isinstance(run, dict) else 0
    chosen = subset(split, run_subset, seed=seed)
    return chosen, (
        f"the run's test subset, {dataset_size(chosen)} of {size} images, seed {seed}; "
        "--full-test for all"
    )


#: The precisions ``--amp`` (and ``run.amp``) name.
AMP_MODES = ("auto", "none", "bf16", "fp16")


def eval_precision(
    amp: str | None, run_amp: Any, device: torch.device
) -> tuple[torch.dtype | None, str]:
    """The autocast dtype of an evaluation on ``device`` and its description: ``amp`` when
    given, else the run's own ``run.amp`` resolved on this machine (``auto``: bf16 where the
    device computes it natively), as the run evaluated itself; full precision for a file that
    saved none."""
    if amp is None:
        if run_amp in AMP_MODES:
            mode, why = run_amp, f"the run's run.amp={run_amp}"
            why += " on this machine" if run_amp == "auto" else ""
        else:
            mode, why = "none", "the checkpoint saves no run.amp"
    else:
        mode, why = amp, "as asked"
    dtype = amp_dtype(mode, device)
    name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return dtype, f"{name} ({why})"


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    model: str | None = None,
    data: str | None = None,
    data_root: str | None = None,
    test_subset: int | None = None,
    full_test: bool = False,
    batch_size: int = 256,
    device: str = "auto",
    amp: str | None = None,
) -> tuple[CheckpointData, dict[str, Any]]:
    """``ckd eval``: the checkpoint's model (:func:`checkpoint_model`) and its top-1, top-5,
    loss and number of images on the test set chosen there, and ``precision``: the one it was
    computed in, in words (``amp``, else the run's own: :func:`eval_precision`)."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1; got {batch_size}")
    if amp is not None and amp not in AMP_MODES:
        raise ConfigError(f"--amp must be one of {', '.join(AMP_MODES)}; got {show(amp)}")
    where = pick_device(device, "--device")
    found = checkpoint_model(path, model, data, data_root, test_subset, full_test)
    dtype, precision = eval_precision(amp, found.amp, where)
    loader = DataLoader(found.test, batch_size=batch_size, num_workers=0)
    metrics: dict[str, Any] = evaluate(found.model.to(where), loader, where, dtype)
    return found, {**metrics, "precision": precision}


def saved_data_config(saved: dict[str, Any], name: str, root: str | None) -> DataConfig:
    """The data section a run saved (its dataset options, e.g. a folder's image size), as a
    :class:`DataConfig` of dataset ``name`` read from ``root``; keys of an older release that
    no longer exist are left out."""
    common = {f.name for f in dataclasses.fields(DataConfig)}
    own = {f.name for f in dataclasses.fields(DATASETS.get(name).Options)}
    kept = {k: v for k, v in saved.items() if k in common | own}
    return DataConfig.from_dict({**kept, "name": name, "root": root})


@dataclass
class Student:
    """A run's student, ready to export: the network (eval mode, on the CPU) and its facts."""

    model: nn.Module
    name: str
    info: DatasetInfo
    checkpoint: Path
    epoch: int | None
    input_mean: list[float] | None
    input_std: list[float] | None

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.info.in_channels, self.info.image_size, self.info.image_size)


def _dataset_info(ckpt: dict[str, Any], path: Path) -> DatasetInfo:
    """The dataset facts the checkpoint carries (runs since ``folder`` data), else the fixed
    dataset's, else the folder's read again from the saved data config."""
    saved = ckpt.get("dataset")
    if isinstance(saved, dict):
        try:
            fields = dict(saved)
            for key in ("mean", "std", "classes"):
                if fields.get(key) is not None:
                    fields[key] = tuple(fields[key])
            return DatasetInfo(**fields)
        except (TypeError, ValueError) as e:
            raise CheckpointError(
                f"{show_path(path)}: its dataset entry is damaged ({one_line(e, 200)})"
            ) from None
    _, _, data = saved_sections(ckpt, path)
    root = data.get("root") if isinstance(data.get("root"), str) else None  # a folder's
    spec = resolve_dataset(saved_data_config(data, data.get("name", DataConfig.name), root))
    assert spec.info is not None
    return spec.info


def load_student(source: str | os.PathLike[str]) -> Student:
    """The student of a run folder or checkpoint of ours, with its trained weights.

    Raises:
        ConfigError: no such file, not a checkpoint of ours, or weights that do not fit.
    """
    path = find_checkpoint(source)
    try:
        ckpt = load_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - not a checkpoint, or weights_only refuses it
        raise ConfigError(f"{path}: cannot be read as a checkpoint: {one_line(e)}") from None
    saved, student, _ = saved_sections(ckpt, path)
    task = ckpt.get("task") or saved.get("task") or "classification"
    if task != "classification":
        raise ConfigError(
            f"{path} is a {show(task, 60)} run; ckd export writes classification students"
        )
    if "name" not in student or not isinstance(ckpt.get("model"), dict):
        raise ConfigError(
            f"{path} is not a checkpoint of a ckd run (no config / student weights); export "
            "takes a run folder or its last.pt / best.pt"
        )
    info = _dataset_info(ckpt, path)
    mean, std = student.get("input_mean"), student.get("input_std")
    config = ModelConfig(student["name"], None, input_mean=mean, input_std=std)
    model = build_model(config, info)
    try:
        load_weights(model, {"model": ckpt["model"]})
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"{path}: does not fit {student['name']}: {one_line(e)}") from None
    return Student(model.eval(), student["name"], info, path, ckpt.get("epoch"), mean, std)
