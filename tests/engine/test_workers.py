"""DataLoader workers change nothing but the speed (issue 21, cases 2 and 8): a run's numbers do
not depend on ``data.num_workers`` (each sample's augmentation is drawn from ``(seed, epoch,
index)``), ``--resume`` with another worker count ends where the uninterrupted run ends, and a
run killed with SIGKILL while its forked workers live leaves its folder free at once."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
import yaml

import ckd
from ckd.engine.checkpoint import load_checkpoint
from ckd.engine.loaders import StandardLoader, sample_seed
from ckd.engine.lock import FolderLock
from ckd.engine.metrics import read_metrics
from tests.conftest import tiny_config
from tests.helpers import Forks

pytestmark = pytest.mark.usefixtures("one_thread")

#: 64 augmented images in batches of 16: 4 steps an epoch, 2 epochs.
DATA = {"train_subset": 64, "test_subset": 50, "batch_size": 16}


def config(root: Path, out: Path, workers: int) -> dict:
    return tiny_config(root, out, data={**DATA, "num_workers": workers})


def same_run(a: Path, b: Path) -> None:
    """The two runs' weights, optimizer and metrics (losses, accuracies) are the same."""
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ca["model"].keys() == cb["model"].keys() and ca["step"] == cb["step"]
    for name, tensor in ca["model"].items():
        assert torch.equal(tensor, cb["model"][name]), name
    keys = ("train_loss", "loss_ce", "train_top1", "test_top1", "test_loss")
    rows = [[{k: r.get(k) for k in keys} for r in read_metrics(run)] for run in (a, b)]
    assert rows[0] == rows[1]


@pytest.fixture(scope="module")
def no_workers(fake_fmnist, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w0") / "run"
    ckd.train(config(fake_fmnist, out, 0), quiet=True)
    return out


def test_the_number_of_workers_changes_no_number(fake_fmnist, no_workers, tmp_path):
    out = tmp_path / "w2"
    ckd.train(config(fake_fmnist, out, 2), quiet=True)
    same_run(out, no_workers)


def test_resume_with_another_worker_count_ends_where_the_run_would(
    fake_fmnist, no_workers, tmp_path
):
    out = tmp_path / "run"
    ckd.train(config(fake_fmnist, out, 2), stop_after=1, quiet=True)
    ckd.train(config(fake_fmnist, out, 0), resume=True, quiet=True)
    same_run(out, no_workers)


def test_each_samples_draws_are_its_own_and_leave_the_main_stream_alone():
    seeds = {sample_seed(0, e, i) for e in range(3) for i in range(1000)}
    assert len(seeds) == 3000 and all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(1, 0, 0) != sample_seed(0, 0, 0)

    class Draws(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i):
            return torch.rand(1), i

    def draws(epoch: int) -> dict[int, float]:
        """Sample index -> its draw, over the epoch's batches."""
        out = {}
        for step in loader.epoch(epoch):
            for values, _, index in step:
                out |= {int(i): float(v) for v, i in zip(values, index, strict=True)}
        return out

    loader = StandardLoader(Draws(), 4, 0, seed=5, prepare=lambda b: b)
    assert loader.resumes_anywhere  # nothing random outside (seed, epoch, index)
    torch.manual_seed(1)
    got = draws(0)
    after = torch.rand(1)
    torch.manual_seed(1)
    assert torch.equal(after, torch.rand(1))  # the main process's stream went on untouched
    assert draws(0) == got and len(set(got.values())) == 8
    other = draws(1)
    assert all(other[i] != got[i] for i in got)  # another epoch, other draws


def test_a_killed_run_with_live_workers_frees_its_folder_at_once(fake_fmnist, no_workers, tmp_path):
    cfg = tmp_path / "c.yaml"
    out = tmp_path / "run"
    cfg.write_text(yaml.safe_dump(config(fake_fmnist, out, 2)))
    forks = Forks(tmp_path)
    try:
        # killed in epoch 2 (step 6 of 8), its two forked workers alive and prefetching
        code, log = forks.run("train", str(cfg), fault="step@6")
        assert code == -signal.SIGKILL, log
        with FolderLock(out) as lock:  # no worker of the dead process holds it
            assert lock.held
        code, log = forks.run("train", str(cfg), "--resume")  # what a requeue does, at once
        assert code == 0, log
        assert "resuming from" in log
    finally:
        forks.close()
    same_run(out, no_workers)
