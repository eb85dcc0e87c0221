"""Typed dataclass -> dict validation used by the config.

:func:`build` turns a plain mapping (from YAML) into a dataclass instance, checking every key and
type and naming the first bad one with what is allowed, e.g.
``optim.lr: expected a finite number, got 'fast'`` or
``unknown key optim.lrr; allowed: lr, momentum``.

Numbers must be finite (``.inf`` and ``.nan`` are refused for every float field), integers
fit in 64 bits and strings are UTF-8 text; values are printed through :func:`ckd.errors.show`
(cut to 200 characters).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union

from ckd.errors import ConfigError, show

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if tp is float:
        return "a finite number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if isinstance(value, Mapping):  # a section: report its own error, not "expected ..."
            for arg in args:
                if isinstance(arg, type) and dataclasses.is_dataclass(arg):
                    return build(arg, value, where)
        errors = []
        for arg in args:
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append((arg, e))
        others = [e for arg, e in errors if arg is not type(None)]
        if value is not None and len(others) == 1 and "expected" in str(others[0]):
            raise others[0]  # X or null given something else: X's own, more precise, error
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {show(value)}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {show(value)}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {show(value)}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {show(value)}")
        return dict(value)
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if -(2**63) <= value < 2**63:
                return value
            raise ConfigError(f"{where}: expected an integer of 64 bits, got {show(value)}")
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float's range
                number = math.inf
            if math.isfinite(number):
                return number
    elif tp is str:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: bytes of a non-UTF-8 command line
                raise ConfigError(f"{where}: expected UTF-8 text, got {show(value)}") from None
            return value
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    elif tp is Any:
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {show(value)}")


def key_text(key: Any) -> str:
    """A key as printed in a message: as it is when it is a short identifier, else shown."""
    return key if isinstance(key, str) and key.isidentifier() and len(key) <= 64 else show(key)


def build(cls: type[T], data: Any, where: str = "", given: dict[str, Any] | None = None) -> T:
    """Build dataclass ``cls`` from mapping ``data``; ``where`` prefixes key paths in errors.

    ``given`` holds fields already built by the caller (taken as they are, not from ``data``).
    """
    given = given or {}
    prefix = f"{where}." if where else ""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields or k in given]
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{key_text(unknown[0])}; allowed: {', '.join(fields) or '(none)'}"
        )
    kwargs = dict(given)
    for name, f in fields.items():
        if name in given:
            continue
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing key {prefix}{name} ({_type_name(hints[name])})")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict, ready for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: nested mappings as dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
