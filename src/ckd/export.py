"""``ckd export``: a trained student alone, as ONNX, TorchScript or safetensors, checked.

The student of a run (its ``last.pt``, or any checkpoint of ours) is rebuilt from the config and
dataset facts saved in the checkpoint (no data needed), with the input-normalisation wrapper
(:class:`~ckd.models.Renormalize`) when the run gave the student ``input_mean`` /
``input_std``, and written as

- ``onnx``: ``torch.onnx.export`` (the TorchScript-based exporter, opset :data:`ONNX_OPSET`),
  input ``input`` ``[N, C, S, S]`` with a free batch dimension, output ``logits`` ``[N, K]``;
  checked with onnxruntime (``pip install 'ckd-distill[onnx]'``);
- ``torchscript``: ``torch.jit.trace`` and ``torch.jit.save``; checked with ``torch.jit.load``;
- ``safetensors``: the student's state dict (the bare network's keys, as a ``teacher.checkpoint``
  or ``load_weights`` reads them); checked by loading it into a freshly built model.

The check runs the exported model and the PyTorch one on the same batch of
:data:`CHECK_BATCH` normalised inputs drawn from N(0, 1) (seed 0; a batch size other than the
one traced, so a batch dimension baked in by tracing is caught) and requires the largest
absolute difference of the logits to be at most ``TOLERANCE * max(1, max |logit|)``; the
difference is printed. A failed check removes what was written.

Beside the model, ``<out>.json`` says what the model expects and gives: the input's shape,
dtype, channel order, pixel range and normalisation, the test-time preprocessing of the
images, the classes, the check's result and the sha256 of the model file.

What ``--force`` may replace: an output this command wrote, i.e. a file whose sidecar is there
and records its name and its bytes' sha256 (and such a sidecar). Never the checkpoint being
exported, nor any other file (a run's ``last.pt``, a file a user put there, a link), whatever
``--force`` says; ``--out`` names a file, not a folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import ckd.tasks  # noqa: F401  (registers the tasks and their config schemas)
from ckd.data import DatasetInfo
from ckd.data.folder import SMALL_MAX
from ckd.errors import ConfigError, one_line, show_path
from ckd.paths import output_path
from ckd.tasks.classification import ModelConfig, Student, build_model, load_student

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript", "safetensors": ".safetensors"}
ONNX_OPSET = 17
CHECK_BATCH = 3
TRACE_BATCH = 2
#: The check's tolerance, relative to the logits' scale: max |diff| <= TOLERANCE * max(1, |ref|).
TOLERANCE = 1e-4
ONNX_INSTALL = "pip install 'ckd-distill[onnx]' (onnx and onnxruntime)"


class ExportCheckError(RuntimeError):
    """The exported model's outputs differ from PyTorch's beyond the tolerance."""


def default_out(checkpoint: Path, fmt: str) -> Path:
    """``runs/x/last.pt`` -> ``runs/x/last.onnx`` (``.torchscript``, ``.safetensors``)."""
    return checkpoint.with_suffix(FORMATS[fmt])


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _our_sidecar(side: Path, name: str) -> dict[str, Any] | None:
    """The sidecar at ``side`` when it is one this command wrote for a model file ``name``."""
    if side.is_symlink() or not side.is_file() or side.stat().st_size > 1 << 20:
        return None
    try:
        meta = json.loads(side.read_bytes())
    except (OSError, ValueError):
        return None
    ours = (
        isinstance(meta, dict)
        and meta.get("format") in FORMATS
        and meta.get("file") == name
        and isinstance(meta.get("sha256"), str)
    )
    return meta if ours else None


def made_by_export(target: Path) -> bool:
    """Whether ``target`` (a model file, or only its sidecar) is an output of this command:
    its sidecar records the file's name and the sha256 of its bytes (a sidecar whose model
    file is gone is this command's too)."""
    meta = _our_sidecar(sidecar_path(target), target.name)
    if meta is None:
        return False
    if not os.path.lexists(target):
        return True
    return not target.is_symlink() and target.is_file() and _sha256(target) == meta["sha256"]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them is not there (or a dangling link)
        return False


def check_target(target: Path, source: Path, force: bool, fmt: str) -> None:
    """Refuse an output ``target`` that is the checkpoint ``source``, a folder, or (with its
    sidecar) a file that exists: without ``force`` any such file, with it any file this command
    did not write (:func:`made_by_export`)."""
    if target.is_dir():
        raise ConfigError(
            f"--out {show_path(target)} is a folder; give the file to write, e.g. "
            f"{show_path(target / default_out(source, fmt).name)}"
        )
    if not target.parent.is_dir():
        raise ConfigError(f"--out {show_path(target)}: folder {target.parent} does not exist")
    side = sidecar_path(target)
    if _same_file(target, source):
        raise ConfigError(
            f"--out {show_path(target)} is the checkpoint being exported; export never writes "
            "over its source: give another --out"
        )
    existing = [p for p in (target, side) if os.path.lexists(p)]
    if not existing:
        return
    if not force:
        raise ConfigError(
            f"{existing[0]} already exists; give another --out, or --force to replace it"
        )
    if not made_by_export(target):
        raise ConfigError(
            f"--force: {show_path(existing[0])} was not written by ckd export (no sidecar "
            f"{side.name} recording its bytes); --force replaces only export's own files, so "
            "nothing was overwritten: give another --out"
        )


def _preprocess(info: DatasetInfo) -> str:
    """How a test image becomes the model's input, before normalisation."""
    s = info.image_size
    if info.name == "fashion_mnist":
        return "28x28 greyscale image zero-padded by 2 pixels a side to 32x32"
    if info.name in ("cifar10", "cifar100"):
        return "32x32 RGB image as it is"
    if info.name == "folder" and s <= SMALL_MAX:
        return f"resize the shorter side to {s} (bilinear), centre crop {s}x{s}"
    return f"resize the shorter side to {round(s * 256 / 224)} (bilinear), centre crop {s}x{s}"


def describe(student: Student, fmt: str, out: Path, check: dict[str, Any]) -> dict[str, Any]:
    """The sidecar: what the exported model expects and gives."""
    info = student.info
    channels = "grey" if info.in_channels == 1 else "RGB"
    return {
        "format": fmt,
        "file": out.name,
        "model": student.name,
        "checkpoint": str(student.checkpoint),
        "epoch": student.epoch,
        "dataset": info.name,
        "input": {
            "name": "input",
            "shape": ["N", info.in_channels, info.image_size, info.image_size],
            "dtype": "float32",
            "layout": f"NCHW, channels {channels}",
            "preprocess": _preprocess(info),
            "pixels": "uint8 / 255, in [0, 1]",
            "normalize": {"mean": list(info.mean), "std": list(info.std)},
            "formula": "input = (pixels - mean) / std, per channel",
            "model_normalisation": _own_normalisation(student, fmt),
        },
        "output": {
            "name": "logits",
            "shape": ["N", info.num_classes],
            "meaning": "class scores (softmax for probabilities)",
            "classes": list(info.classes) if info.classes else None,
        },
        "check": check,
    }


def _own_normalisation(student: Student, fmt: str) -> dict[str, Any] | None:
    """The student's own input normalisation (``input_mean`` / ``input_std``), if it has one:
    inside the exported model, or for the safetensors weights to be rebuilt with."""
    if student.input_mean is None:
        return None
    where = (
        "not in the file (bare network weights): build the model with input_mean/input_std"
        if fmt == "safetensors"
        else "inside the exported model, which re-normalises its input to these"
    )
    return {"mean": student.input_mean, "std": student.input_std, "applied": where}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' and tracer's warnings (deprecations, trace constants) stay out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _onnx(student: Student, out: Path) -> Callable[[Tensor], Tensor]:
    import onnxruntime as ort

    example = torch.zeros(student.input_shape(TRACE_BATCH))
    with _quiet():
        torch.onnx.export(
            student.model,
            (example,),
            str(out),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
        )
    with contextlib.suppress(ImportError):
        import onnx

        onnx.checker.check_model(str(out))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def _torchscript(student: Student, out: Path) -> Callable[[Tensor], Tensor]:
    example = torch.zeros(student.input_shape(TRACE_BATCH))
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(student.model, example, check_trace=False)
        torch.jit.save(traced, str(out))
        loaded = torch.jit.load(str(out), map_location="cpu").eval()
    return loaded


def _safetensors(student: Student, out: Path) -> Callable[[Tensor], Tensor]:
    from safetensors.torch import save_file

    state = {
        k: v.detach().cpu().contiguous().clone() for k, v in student.model.state_dict().items()
    }
    meta = {"ckd_model": student.name, "ckd_dataset": json.dumps(_info_dict(student.info))}
    save_file(state, str(out), metadata=meta)
    # a fresh model of the same kind, loading the file (as teacher.checkpoint would)
    config = ModelConfig(student.name, str(out), student.input_mean, student.input_std)
    return build_model(config, student.info).eval()


def _info_dict(info: DatasetInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "num_classes": info.num_classes,
        "in_channels": info.in_channels,
        "image_size": info.image_size,
        "mean": list(info.mean),
        "std": list(info.std),
    }


WRITERS: dict[str, Callable[[Student, Path], Callable[[Tensor], Tensor]]] = {
    "onnx": _onnx,
    "torchscript": _torchscript,
    "safetensors": _safetensors,
}
CHECKED_WITH = {
    "onnx": "onnxruntime",
    "torchscript": "torch.jit.load",
    "safetensors": "a fresh model loading the file",
}


def _require_runtime(fmt: str) -> None:
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"--format onnx needs onnxruntime to check the exported model: {ONNX_INSTALL}"
            ) from None


def compare(reference: nn.Module, exported: Callable[[Tensor], Tensor], shape: tuple) -> dict:
    """Run both on one seeded N(0, 1) batch of ``shape``; the check's figures."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(x).float()
        got = exported(x.clone())
        got = got.float() if isinstance(got, Tensor) else torch.as_tensor(np.asarray(got))
    if got.shape != want.shape:
        raise ExportCheckError(
            f"the exported model gives {list(got.shape)} for {list(shape)}, PyTorch "
            f"{list(want.shape)}"
        )
    diff = float((got - want).abs().max())
    bound = TOLERANCE * max(1.0, float(want.abs().max()))
    return {"batch": list(shape), "max_abs_diff": diff, "tolerance": bound, "ok": diff <= bound}


def export(
    source: str | Path, fmt: str, out: str | Path | None = None, force: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Export a run's student as ``fmt``; returns the model file and the sidecar's content.

    Nothing is written unless the check passes (``out`` and ``<out>.json`` appear together).

    Raises:
        ConfigError: a bad format, source or output (an existing file without ``force``), or a
            missing runtime.
        ExportCheckError: the exported model's outputs differ beyond the tolerance.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    _require_runtime(fmt)
    student = load_student(source)
    target = output_path(out, "--out") if out is not None else default_out(student.checkpoint, fmt)
    check_target(target, student.checkpoint, force, fmt)
    side = sidecar_path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp{FORMATS[fmt]}")
    side_tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    try:
        try:
            exported = WRITERS[fmt](student, tmp)
        except (RuntimeError, ValueError, TypeError) as e:
            raise ConfigError(
                f"{student.name}: cannot be exported as {fmt}: {one_line(e)}"
            ) from None
        check = compare(student.model, exported, student.input_shape(CHECK_BATCH))
        check["checked_with"] = CHECKED_WITH[fmt]
        if not check["ok"]:
            raise ExportCheckError(
                f"the {fmt} model's logits differ from PyTorch's by up to "
                f"{check['max_abs_diff']:.3g} (tolerance {check['tolerance']:.3g}); nothing written"
            )
        meta = describe(student, fmt, target, check)
        meta["sha256"] = _sha256(tmp)
        side_tmp.write_text(json.dumps(meta, indent=2) + "\n")
        check_target(target, student.checkpoint, force, fmt)  # again: nothing changed meanwhile
        os.replace(tmp, target)
        os.replace(side_tmp, side)
        return target, meta
    finally:
        tmp.unlink(missing_ok=True)
        side_tmp.unlink(missing_ok=True)
