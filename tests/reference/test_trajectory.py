"""End to end: this project's trainer trains what the reference trainer trains.

``tests/fixtures/reference/trajectory.pt`` holds the student after the reference code's own training
loop (its ``BaseTrainer``: SGD with momentum 0.9 and weight decay 5e-4 on every learnable
tensor, its step / per-epoch cosine learning rate, ``loss = sum of the terms``) ran 24 steps
over three epochs of the batches this project's trainer draws, from the reference's own seeded
initialisation of the student (see ``tests/fixtures/record_reference.py``, ``record_trajectory``).
Here ``ckd.engine.Trainer`` runs the same config (``reference_pairs.trajectory_config``: CKD and
ReviewKD on the cosine schedule, KD and DKD on the step schedule, learning rate updated once per
epoch, warm-ups of two epochs) from those weights, and its ``last.pt`` must hold the same student,
every parameter and BN statistic, and for ReviewKD the same ABF modules.

Both runs are in float64 (see ``reference_pairs``): this regime (lr 0.05, batch 8, from a random
start) is chaotic, a relative change of 1e-7 anywhere grows to 1e-1 in 24 steps, so float32
runs of the reference itself end 1e-2 apart, whereas float64 rounding (1e-16) ends below 1e-9.
Tolerance: ``RTOL`` = 1e-6 of each tensor's largest entry, i.e. the float32 storage of the
fixture (6e-8, the largest difference measured here) with a margin of 16, on AVX2 and AVX-512
CPUs alike. Measured sensitivity, for scale: the learning rate updated per step instead of per
epoch moves the weights by 0.36 of their scale, weight decay 4.9e-4 instead of 5e-4 by 0.05,
w_ckd 10.01 instead of 10 by 0.16, a DKD warm-up of 3 epochs instead of 2 by 1.4.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckd.config import config_from_dict
from ckd.data import make_fake_cifar
from ckd.engine import Trainer
from ckd.models import create_model
from tests import reference_pairs as rp
from tests.zoo_fill import fill_state, named_shapes

pytestmark = pytest.mark.usefixtures("one_thread")

RTOL = 1e-6

PATH = rp.fixture_path("trajectory")


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> tuple[dict[str, torch.Tensor], Path, Path, Path]:
    """The fixture, the generated data, and the starting student and teacher checkpoints."""
    ref = torch.load(PATH, weights_only=True)
    t = rp.TRAJECTORY
    tmp = tmp_path_factory.mktemp("trajectory")
    root = make_fake_cifar(tmp / "data", t["classes"], t["train"], t["test"], seed=0)
    assert torch.equal(rp.data_checksum(root), ref["data_checksum"]), (
        "make_fake_cifar writes other images than when the fixture was recorded: rerun "
        "tests/fixtures/record_reference.py --only trajectory"
    )
    student = {k.split("/", 1)[1]: v for k, v in ref.items() if k.startswith("init/")}
    teacher = create_model(t["teacher"], num_classes=t["classes"])
    torch.save({"model": student}, tmp / "student.pth")
    torch.save({"model": fill_state(named_shapes(teacher.state_dict()))}, tmp / "teacher.pth")
    return ref, root, tmp / "student.pth", tmp / "teacher.pth"


def worst(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest difference relative to the tensor's largest entry (integers: exact or inf)."""
    if not want.is_floating_point():
        return 0.0 if torch.equal(got, want) else float("inf")
    scale = want.abs().max().clamp_min(1e-12)
    return ((got - want).abs().max() / scale).item()


@pytest.mark.parametrize("method", list(rp.TRAJECTORY_METHODS))
def test_the_trainer_ends_where_the_reference_trainer_ends(method, start, tmp_path):
    ref, root, student, teacher = start
    out = tmp_path / "run"
    cfg = config_from_dict(rp.trajectory_config(method, root, out, student, teacher))
    with rp.float64_default():  # see reference_pairs.TRAJECTORY_METHODS
        result = Trainer(cfg, echo=lambda _: None).fit()
    assert result["finished"] and result["epochs"] == rp.TRAJECTORY["epochs"]
    ckpt = torch.load(out / "last.pt", weights_only=True)
    want = {k.split("/", 1)[1]: v for k, v in ref.items() if k.startswith(f"{method}/")}
    modules = {k: want.pop(k) for k in ("modules", "modules_init") if k in want}
    assert ckpt["model"].keys() == want.keys()
    diffs = {k: worst(ckpt["model"][k].to(v.dtype), v) for k, v in want.items()}
    key = max(diffs, key=diffs.get)
    assert diffs[key] <= RTOL, f"{method}: {key} differs by {diffs[key]:.3g} of its scale"
    moved = {k: worst(ckpt["model"][k].to(v.dtype), ref[f"init/{k}"]) for k, v in want.items()}
    assert max(moved.values()) > 100 * RTOL  # the run did move the weights
    if method == "reviewkd":  # the ABF modules, by norm and projection of each tensor
        own = {k.removeprefix("methods.0."): v for k, v in ckpt["method"].items()}
        keys = list(own)
        got = rp.grad_summary(list(own.items()))
        assert torch.allclose(got, modules["modules"], rtol=RTOL, atol=RTOL * got[:, 0].max())
        assert len(keys) == len(modules["modules"])
