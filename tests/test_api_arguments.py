"""The Python API's entry points driven with arguments of any type (issue 21, case 10): every
failure is a bad-input error of ``ckd.errors.USER_ERRORS`` (``FileNotFoundError`` among them)
with a one-line message, never a TypeError from deep inside. Valid-looking inputs reach the
real code on tiny stand-in data (one short epoch; a second valid call finds the run there)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckd
from ckd.errors import USER_ERRORS
from ckd.models import create_model
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

#: Any value: what a careless caller may pass for any argument.
ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.integers(min_value=2**62, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=8),
    st.lists(st.one_of(st.integers(), st.text(max_size=6)), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
    st.builds(object),
    st.just(print),
)
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def place(tmp_path_factory, fake_fmnist):
    """A folder to work in (relative paths land here), a tiny valid config (a KD one on the
    fast path, for the cache), and a finished run."""
    tmp = tmp_path_factory.mktemp("api")
    torch.manual_seed(0)
    torch.save({"model": create_model("resnet8", 10, 1).state_dict()}, tmp / "teacher.pt")
    small = {"train_subset": 32, "test_subset": 20, "batch_size": 16}
    config = tiny_config(fake_fmnist, tmp / "run", data=small, optim={"epochs": 1})
    kd = tiny_config(
        fake_fmnist,
        tmp / "kd",
        data={**small, "loader": "fast"},
        teacher={"name": "resnet8", "checkpoint": str(tmp / "teacher.pt")},
        method={"name": "kd"},
        optim={"epochs": 1},
    )
    (tmp / "kd.yaml").write_text(yaml.safe_dump(kd))
    before = Path.cwd()
    os.chdir(tmp)
    try:
        ckd.train(config, quiet=True)
        yield {"config": config, "kd": tmp / "kd.yaml", "run": tmp / "run"}
    finally:
        os.chdir(before)


def only_user_errors(call) -> None:
    try:
        call()
    except USER_ERRORS as e:
        text = str(e)
        assert text.strip() and "\n" not in text and "Traceback" not in text, repr(text)
    # anything else (a TypeError from deep inside, an AttributeError, ...) fails the test


def arguments(data, valid: dict) -> dict:
    """``valid`` with one argument (now and then a second) replaced by any value, so that
    every argument's check is reached past the others."""
    args = dict(valid)
    for _ in range(data.draw(st.sampled_from([1, 1, 1, 2]))):
        args[data.draw(st.sampled_from(sorted(valid)))] = data.draw(ANY)
    return args


def quiet(_line: str) -> None:
    pass


@SETTINGS
@given(data=st.data())
def test_train_takes_anything_and_fails_only_in_one_line(place, data):
    valid = {
        "config": place["config"],
        "overrides": ["optim.lr=0.1"],
        "resume": True,  # the run is finished: nothing to do
        "stop_after": None,
        "quiet": True,
        "echo": None,
    }
    args = arguments(data, valid)
    only_user_errors(lambda: ckd.train(args.pop("config"), args.pop("overrides"), **args))


@SETTINGS
@given(data=st.data())
def test_evaluate_and_load_student_take_anything_and_fail_only_in_one_line(place, data):
    source = data.draw(st.one_of(st.just(place["run"]), ANY))
    only_user_errors(lambda: ckd.load_student(source))
    valid = {
        "source": place["run"],
        "data_root": None,
        "full_test": False,
        "subset": None,
        "batch_size": 256,
        "device": "cpu",
        "amp": None,
    }
    args = arguments(data, valid)
    only_user_errors(lambda: ckd.evaluate(args.pop("source"), **args))


@SETTINGS
@given(data=st.data())
def test_build_cache_takes_anything_and_fails_only_in_one_line(place, data):
    valid = {
        "config": str(place["kd"]),
        "overrides": (),
        "out": place["kd"].parent / "cache",  # built by the first valid call, then up to date
        "features": False,
        "force": False,
        "echo": quiet,
    }
    args = arguments(data, valid)
    only_user_errors(lambda: ckd.build_cache(args.pop("config"), args.pop("overrides"), **args))
