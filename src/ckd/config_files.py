"""Config files: where the shipped ones live, how a name or path finds its YAML file, ``_base_``
chains and ``key.path=value`` overrides. Torch-free (``ckd list configs`` and ``ckd --help``
import it without loading torch); :mod:`ckd.config` turns the mapping into a typed config."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml

from ckd.errors import ConfigError, show
from ckd.paths import read_small_file
from ckd.safe_yaml import describe_yaml_error, load_yaml

#: The configs shipped with the package (``configs/`` at the repository root links here).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def config_name(path: str | Path) -> str:
    """``configs/cifar100/ckd/x.yaml`` -> ``cifar100/ckd/x``; other paths -> their stem."""
    p = Path(path).resolve()
    for root in (CONFIG_DIR, Path.cwd() / "configs"):
        try:
            return str(p.relative_to(root.resolve()).with_suffix(""))
        except ValueError:
            continue
    return p.stem


def resolve_config_path(name: str | os.PathLike[str]) -> Path:
    """A path to a YAML file, or a shipped config's name (``fashion_mnist/ckd``)."""
    p = Path(name)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / p, CONFIG_DIR / p.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"config {show(str(name))} not found: not a file, nor a shipped config "
        "(see `ckd list configs`)"
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


#: Most ``_base_`` files a config may chain.
MAX_BASES = 32


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping, its ``_base_`` files merged under it (see :mod:`ckd.safe_yaml`
    for what is refused). Each file must be a regular file of at most
    :data:`~ckd.paths.MAX_CONFIG_BYTES`, checked before it is read (``/dev/zero`` or a FIFO as a
    ``_base_`` is one line, not a hang or all the memory)."""
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle")
    if len(seen) >= MAX_BASES:
        raise ConfigError(f"{path}: more than {MAX_BASES} _base_ files in a chain")
    raw = read_small_file(path, "config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})"
        ) from None
    try:
        data = load_yaml(text, str(path))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML{describe_yaml_error(e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: _base_ must be a file name; got {show(base)}")
    return _merge(read_yaml((path.parent / base).resolve(), (*seen, path)), data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_OVERRIDE = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)=(.*)$", re.S)
#: Most dotted parts of an override's key (a config nests 4 or 5 deep).
MAX_KEY_PARTS = 16


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings; values are parsed as YAML (``1e-3``, ``[1, 2]``, ``null``),
    with the limits of :mod:`ckd.safe_yaml`; text that is not valid YAML is taken as a string."""
    data = _merge({}, data)
    for item in overrides:
        m = _OVERRIDE.match(item)
        if not m:
            raise ConfigError(f"bad override {show(item)}; expected key.path=value")
        keys, raw = m.group(1).split("."), m.group(2)
        if len(keys) > MAX_KEY_PARTS:
            raise ConfigError(
                f"override {show(m.group(1))}: more than {MAX_KEY_PARTS} dotted parts"
            )
        try:
            value = load_yaml(raw, f"override {m.group(1)}") if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return data
