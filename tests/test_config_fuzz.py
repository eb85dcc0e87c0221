"""The config loader against hostile and random input: YAML bombs, deep nesting, duplicate keys,
non-UTF-8 bytes, YAML 1.2 floats, and property-based documents and overrides, each of which must
give a valid config or one short ConfigError line, never another exception."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckd.config import OptimConfig, RunConfig, load_config
from ckd.data import FolderOptions
from ckd.errors import ConfigError
from ckd.tasks.classification import ClassificationConfig as Config
from ckd.tasks.classification import DataConfig, ModelConfig
from ckd.tasks.detection.config import DetDataConfig, DetectorConfig, DetModelConfig, InputConfig

#: A billion-laughs document (under the 515 bytes of the issue): 10**9 strings once expanded.
BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{k}: &{k} [{','.join(['*' + p] * 10)}]"
            for p, k in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "description: *i",
    ]
)

VALID = {
    "data": {"name": "fashion_mnist", "batch_size": 32, "num_workers": 0},
    "student": {"name": "resnet8"},
    "teacher": {"name": "resnet8", "checkpoint": __file__},
    "method": {"name": "ckd", "w_ckd": 10.0},
    "optim": {"epochs": 2, "lr": 0.05},
    "run": {"device": "cpu", "out_dir": "/nonexistent/ckd-fuzz-run"},
}


def load_text(tmp_path: Path, text: str | bytes, overrides: list[str] | None = None) -> Config:
    path = tmp_path / "c.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return load_config(path, overrides or [])


def refused(tmp_path: Path, text: str | bytes, overrides: list[str] | None = None) -> str:
    """The ConfigError message: one line, short."""
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text, overrides)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600, msg[:1000]
    return msg


def flow_bomb(levels: int, width: int) -> str:
    """``[&a [lol, ...], &b [*a, ...], ..., *last]``: width**levels strings in one flow value."""
    names = "abcdefghij"[:levels]
    parts = [f"&a [{', '.join(['lol'] * width)}]"] + [
        f"&{k} [{', '.join(['*' + p] * width)}]" for p, k in zip(names, names[1:], strict=False)
    ]
    return f"[{', '.join(parts)}, *{names[-1]}]"


def test_a_515_byte_alias_bomb_is_refused_at_once(tmp_path):
    assert len(BOMB) <= 515
    start = time.perf_counter()
    msg = refused(tmp_path, BOMB)
    assert time.perf_counter() - start < 2.0
    assert "expands to more than 100,000 nodes" in msg
    msg = refused(tmp_path, yaml.safe_dump(VALID), [f"description={flow_bomb(9, 10)}"])
    assert "override description" in msg and "expands to more than" in msg


def test_a_big_value_below_the_limit_is_printed_cut(tmp_path):
    """9**4 strings: accepted by the loader, refused by the schema, printed in 200 characters."""
    text = yaml.safe_dump(VALID) + f"description: {flow_bomb(4, 9)}\n"
    start = time.perf_counter()
    msg = refused(tmp_path, text)
    assert time.perf_counter() - start < 10.0
    assert msg.startswith("description: expected a string, got [") and len(msg) < 260


def test_deep_nesting_and_recursion_are_refused(tmp_path):
    msg = refused(tmp_path, "a: " + "[" * 20_000 + "]" * 20_000 + "\n")
    assert "nested deeper than 64 levels" in msg
    msg = refused(tmp_path, "".join("  " * i + f"k{i}:\n" for i in range(1_000)))
    assert "nested deeper than 64 levels" in msg
    msg = refused(tmp_path, "a: &a [*a]\n")
    assert "refers to a node that contains it" in msg
    msg = refused(tmp_path, yaml.safe_dump(VALID), ["description=" + "[" * 20_000])
    assert "description" in msg
    msg = refused(tmp_path, yaml.safe_dump(VALID), [".".join(["run"] * 20_000) + "=1"])
    assert "more than 16 dotted parts" in msg


def test_duplicate_keys_non_utf8_and_huge_numbers_are_one_line(tmp_path):
    msg = refused(tmp_path, "optim:\n  lr: 0.1\n  lr: 0.2\n")
    assert msg.endswith("c.yaml at line 3: duplicate key 'lr' (first at line 2)")
    refused(tmp_path, yaml.safe_dump(VALID), ["optim={lr: 1, lr: 2}"])
    msg = refused(tmp_path, "description: caf\xe9\n".encode("latin1"))
    assert msg.endswith("c.yaml: not UTF-8 text (byte 0xe9 at offset 16)")
    msg = refused(tmp_path, yaml.safe_dump(VALID), ["optim.epochs=" + "9" * 5000])
    assert "optim.epochs" in msg
    msg = refused(tmp_path, yaml.safe_dump(VALID), ["optim.epochs=" + "9" * 4000])
    assert "expected an integer of 64 bits, got <an integer of about 4000 digits>" in msg


def test_yaml_1_2_floats_in_files_and_overrides(tmp_path):
    text = yaml.safe_dump(VALID).replace("lr: 0.05", "lr: 1e-3")
    assert "lr: 1e-3" in text
    cfg = load_text(tmp_path, text, ["optim.weight_decay=5E-4", "optim.min_lr=1.0e-5"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.min_lr) == (1e-3, 5e-4, 1e-5)
    cfg = load_text(tmp_path, text, ["optim.epochs=1_000", "optim.momentum=.5"])
    assert cfg.optim.epochs == 1000 and cfg.optim.momentum == 0.5
    refused(tmp_path, text, ["optim.epochs=1e3"])  # a float is not an epoch count


# --- property-based ---------------------------------------------------------------------------

SECTIONS = {
    "data": DataConfig,
    "student": ModelConfig,
    "teacher": ModelConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}
KEYS = [(s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
KEYS += [("data", f.name) for f in dataclasses.fields(FolderOptions)] + [
    ("method", k) for k in ("name", "w_ce", "w_ckd", "temperature", "negatives", "also")
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["auto", "cpu", "fast", "step", "ckd", "resnet8", "fashion_mnist", "1e-3"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check(tmp_path: Path, text: str | bytes, overrides: list[str] | None = None) -> None:
    """A valid config, or one ConfigError line; nothing else may escape."""
    try:
        cfg = load_text(tmp_path, text, overrides)
    except ConfigError as e:
        msg = str(e)
        assert msg and "\n" not in msg and len(msg) < 1500, msg[:2000]
        return
    assert isinstance(cfg, Config)
    assert math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0
    for part in cfg.method.parts():
        assert all(
            getattr(part.options, f.name) >= 0
            for f in dataclasses.fields(part.options)
            if f.name.startswith("w_")
        )


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=1, max_size=4))
def test_random_values_in_a_valid_document(tmp_path, changes):
    data = {k: dict(v) for k, v in VALID.items()}
    for (section, key), value in changes:
        data.setdefault(section, {})[key] = value
    check(tmp_path, yaml.safe_dump(data, allow_unicode=True))


@FUZZ
@given(
    overrides=st.lists(
        st.tuples(st.sampled_from(KEYS), st.text(max_size=40)).map(
            lambda kv: f"{kv[0][0]}.{kv[0][1]}={kv[1]}"
        )
        | st.text(max_size=40),
        max_size=4,
    )
)
def test_random_overrides(tmp_path, overrides):
    check(tmp_path, yaml.safe_dump(VALID), overrides)


@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=300))
def test_random_documents(tmp_path, text):
    check(tmp_path, text)


@FUZZ
@given(
    doc=st.dictionaries(
        st.sampled_from([*SECTIONS, "method", "description", "_base_"]) | st.text(max_size=8),
        values,
        max_size=6,
    )
)
def test_random_mappings(tmp_path, doc):
    check(tmp_path, yaml.safe_dump(doc, allow_unicode=True))


DET_KEYS = [
    (s, f.name)
    for s, cls in {
        "data": DetDataConfig,
        "input": InputConfig,
        "detector": DetectorConfig,
        "student": DetModelConfig,
        "optim": OptimConfig,
        "run": RunConfig,
    }.items()
    for f in dataclasses.fields(cls)
] + [("method", k) for k in ("name", "w_ckd", "alpha", "beta", "temperature", "also")]


@FUZZ
@given(
    changes=st.lists(
        st.tuples(st.sampled_from(DET_KEYS), values.map(lambda v: yaml.safe_dump(v).strip())),
        min_size=1,
        max_size=3,
    )
)
def test_random_overrides_of_a_detection_config(changes):
    overrides = [f"{s}.{k}={v}" for (s, k), v in changes]
    try:
        cfg = load_config("detection/shapes/mask_rcnn_teacher", overrides)
    except ConfigError as e:
        assert "\n" not in str(e) and len(str(e)) < 1500, str(e)[:2000]
        return
    assert math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0
