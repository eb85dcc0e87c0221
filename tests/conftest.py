"""Shared fixtures: tiny offline datasets and fast configs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

import ckd.tasks  # noqa: F401  (registers the tasks and their config schemas)
from ckd.data import make_fake_fashion_mnist

torch.set_num_threads(2)
# run.amp=auto as on a CPU without native bf16 (full precision), whatever CPU runs the tests,
# in this process and the ones it starts; tests of the bf16 choice mock the CPU's flags.
os.environ["CKD_CPU_BF16"] = "0"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    small batches gain nothing from threads, and on a busy machine threads spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fake_fmnist(tmp_path_factory) -> Path:
    """A tiny Fashion-MNIST-format folder (class-dependent images) made by the project."""
    root = tmp_path_factory.mktemp("fmnist")
    return make_fake_fashion_mnist(root, n_train=320, n_test=100, seed=0)


def tiny_config(root: Path, out_dir: Path, **sections: Any) -> dict[str, Any]:
    """A config mapping that trains resnet8 on ``root`` for two short epochs on the CPU."""
    cfg: dict[str, Any] = {
        "data": {
            "name": "fashion_mnist",
            "root": str(root),
            "batch_size": 32,
            "test_batch_size": 100,
            "num_workers": 0,
        },
        "student": {"name": "resnet8"},
        "method": {"name": "vanilla"},
        "optim": {"epochs": 2, "lr": 0.05, "schedule": "cosine"},
        "run": {
            "seed": 0,
            "out_dir": str(out_dir),
            "tensorboard": False,
            "progress": False,
            "device": "cpu",
        },
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg
