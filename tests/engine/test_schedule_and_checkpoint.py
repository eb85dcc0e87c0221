"""Engine pieces: learning-rate schedules, atomic checkpoints, RNG state round trip, and a
CIFAR-format run through a shipped config."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from ckd.cli import main
from ckd.config import OptimConfig
from ckd.data import make_fake_cifar
from ckd.engine.checkpoint import load_checkpoint, rng_state, save_atomic, set_rng_state
from ckd.engine.metrics import read_metrics
from ckd.engine.schedule import Schedule


def learning_rate(o: OptimConfig, epoch: int, iteration: int, steps_per_epoch: int) -> float:
    return Schedule.of(o, steps_per_epoch, 64)(epoch * steps_per_epoch + iteration)


def test_step_schedule_decays_at_the_milestone_epochs():
    o = OptimConfig(epochs=240, lr=0.05, schedule="step", milestones=[150, 180, 210], gamma=0.1)
    lrs = {e: learning_rate(o, e, 0, 100) for e in (0, 149, 150, 179, 180, 210, 239)}
    assert lrs[0] == lrs[149] == 0.05
    assert lrs[150] == pytest.approx(0.005) and lrs[179] == pytest.approx(0.005)
    assert lrs[180] == pytest.approx(0.0005) and lrs[239] == pytest.approx(0.00005)


def test_cosine_schedule_goes_from_lr_to_min_lr_per_iteration():
    o = OptimConfig(epochs=10, lr=0.1, schedule="cosine", min_lr=0.0)
    assert learning_rate(o, 0, 0, 50) == pytest.approx(0.1)
    assert learning_rate(o, 5, 0, 50) == pytest.approx(0.05)
    assert learning_rate(o, 9, 49, 50) == pytest.approx(
        0.1 * 0.5 * (1 + math.cos(math.pi * 9.98 / 10))
    )
    assert learning_rate(o, 2, 10, 50) > learning_rate(o, 2, 11, 50)


def test_linear_warmup_scales_the_first_epochs():
    o = OptimConfig(epochs=10, lr=0.1, schedule="constant", warmup_epochs=2)
    assert learning_rate(o, 0, 0, 4) == pytest.approx(0.1 * 0.25 / 2)
    assert learning_rate(o, 1, 3, 4) == pytest.approx(0.1)
    assert learning_rate(o, 5, 0, 4) == pytest.approx(0.1)


def test_an_iteration_schedule_counts_steps_and_agrees_with_its_epoch_form():
    it = OptimConfig(epochs=None, iters=1000, lr=0.02, milestones=[600, 800], warmup_iters=50)
    sched = Schedule.of(it, 37, 8)  # steps per epoch do not matter to an iteration schedule
    assert sched(0) == pytest.approx(0.02 / 50) and sched(49) == pytest.approx(0.02)
    assert sched(599) == pytest.approx(0.02) and sched(600) == pytest.approx(0.002)
    assert sched(800) == pytest.approx(0.0002)
    # an epoch schedule is the iteration schedule of epochs x steps per epoch
    ep = OptimConfig(epochs=10, lr=0.1, schedule="cosine", warmup_epochs=1.5, min_lr=0.001)
    as_iters = OptimConfig(
        epochs=None, iters=10 * 20, lr=0.1, schedule="cosine", warmup_iters=30, min_lr=0.001
    )
    a, b = Schedule.of(ep, 20, 64), Schedule.of(as_iters, 20, 64)
    assert [a(t) for t in range(200)] == pytest.approx([b(t) for t in range(200)])
    scaled = OptimConfig(epochs=10, lr=0.1, lr_reference_batch=256)
    assert Schedule.of(scaled, 20, 512)(0) == pytest.approx(0.2)


def test_save_atomic_never_leaves_a_truncated_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1}, path)
    assert load_checkpoint(path) == {"epoch": 1}

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1}  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    state = rng_state()
    save_atomic({"rng": state}, tmp_path / "c.pt")
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


def test_shipped_cifar100_config_trains_on_a_cifar_format_folder(tmp_path, capsys):
    root = make_fake_cifar(tmp_path / "cifar", num_classes=100, n_train=200, n_test=100)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "cifar100/vanilla/resnet8x4",
            f"data.root={root}",
            "data.verify=false",  # generated, so not the published md5s
            f"run.out_dir={out}",
            "student.name=resnet8",
            "optim.epochs=1",
            "data.num_workers=0",
            "run.device=cpu",
            "run.tensorboard=false",
        ]
    )
    assert code == 0, capsys.readouterr().err
    (row,) = read_metrics(out)
    assert row["epoch"] == 1 and 0 <= row["test_top1"] <= 100
    assert load_checkpoint(out / "last.pt")["config"]["data"]["name"] == "cifar100"
