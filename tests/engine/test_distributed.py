"""Distributed training: two gloo processes on the CPU against one process with the same global
batch, the gathered CKD loss, and resuming with another number of processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ckd.api import evaluate
from ckd.config import config_from_dict
from ckd.engine import Trainer
from ckd.engine.checkpoint import load_checkpoint
from ckd.engine.distributed import (
    SINGLE,
    DistContext,
    MicroBatchSampler,
    check_split,
    my_pieces,
    shard,
)
from ckd.errors import ConfigError
from ckd.losses import ckd_loss
from tests.conftest import tiny_config
from tests.helpers import _launch


def quiet(_msg: str) -> None:
    pass


SMALL = {"train_subset": 128, "test_subset": 50}  # 4 steps of 32 per epoch


def _teacher(root: Path, out: Path) -> str:
    cfg = tiny_config(root, out, optim={"epochs": 1}, data=SMALL)
    Trainer(config_from_dict(cfg), echo=quiet).fit()
    return str(out / "last.pt")


def _ckd_config(root: Path, out: Path, teacher: str, **extra) -> dict:
    cfg = tiny_config(
        root,
        out,
        data={"loader": "fast", "batch_size": 32, **SMALL},
        teacher={"name": "resnet8", "checkpoint": teacher},
        # per-rank negatives (the default): the same as per-micro-batch ones with accumulation
        method={"name": "ckd", "w_ckd": 1.0},
        optim={"epochs": 2, "lr": 0.05, "schedule": "cosine"},
    )
    for section, values in extra.items():
        cfg[section] = {**cfg[section], **values}
    return cfg


# ------------------------------------------------------------------ batch bookkeeping
def test_micro_batches_cover_each_global_batch_once_in_rank_order():
    batch = torch.arange(12)
    ranks = [DistContext(r, 2) for r in range(2)]
    pieces = [p for ctx in ranks for p in my_pieces(batch, ctx, accum_steps=3)]
    assert [len(p) for p in pieces] == [2] * 6
    assert torch.equal(torch.cat(pieces), batch)
    # one process with accumulation sees the same micro-batches as several processes
    assert all(torch.equal(a, b) for a, b in zip(my_pieces(batch, SINGLE, 6), pieces, strict=True))


def test_one_process_sampler_gives_the_random_sampler_batches():
    data = list(range(50))
    old = torch.utils.data.DataLoader(
        data, batch_size=8, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(3)
    )
    g = torch.Generator().manual_seed(3)
    new = torch.utils.data.DataLoader(
        data, batch_sampler=MicroBatchSampler(50, 8, g, True, SINGLE), generator=g
    )
    assert [b.tolist() for b in old] == [b.tolist() for b in new]


def test_shards_cover_the_test_set_once():
    parts = [shard(10, DistContext(r, 3)) for r in range(3)]
    assert torch.equal(torch.cat(parts), torch.arange(10))


def test_a_global_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(ConfigError, match=r"data.batch_size=30 .* 4 x 2 = 8"):
        check_split(30, DistContext(0, 4), 2)
    with pytest.raises(ConfigError, match="optim.accum_steps=4"):
        config_from_dict(
            tiny_config(Path("."), Path("x"), optim={"accum_steps": 4}, data={"batch_size": 30})
        )


# ------------------------------------------------------------------ two processes
def _gathered_loss(rank: int, out: str) -> None:
    dist.init_process_group("gloo")
    ctx = DistContext(rank, 2)
    g = torch.Generator().manual_seed(0)
    s_all, t_all = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    mine = slice(4 * rank, 4 * rank + 4)
    s = s_all[mine].clone().requires_grad_(True)
    results = {}
    for negatives in ("cross", "student"):
        s.grad = None
        loss = ckd_loss(ctx.gather(s), ctx.gather(t_all[mine]), 0.5, negatives)
        loss.backward()
        results[negatives] = (loss.detach(), s.grad.clone())
    torch.save(results, Path(out) / f"rank{rank}.pt")


def test_gathered_ckd_loss_equals_the_loss_of_the_concatenated_batch(tmp_path):
    _launch(_gathered_loss, 2, str(tmp_path))
    g = torch.Generator().manual_seed(0)
    s_all, t_all = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    for negatives in ("cross", "student"):
        s = s_all.clone().requires_grad_(True)
        loss = ckd_loss(s, t_all, 0.5, negatives)
        loss.backward()
        for rank in range(2):
            got_loss, got_grad = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)[
                negatives
            ]
            torch.testing.assert_close(got_loss, loss.detach())
            # each rank's slice gets the gradient summed over both ranks' (equal) losses: DDP's
            # average over the ranks then gives the single-process gradient
            torch.testing.assert_close(got_grad / 2, s.grad[4 * rank : 4 * rank + 4])


def _train(rank: int, cfg: dict, stop_after, resume: bool, out: str) -> None:
    torch.set_num_threads(1)  # as the spawned ranks: another thread count rounds differently
    trainer = Trainer(config_from_dict(cfg), resume=resume, echo=quiet)
    try:
        trainer.fit(stop_after=stop_after)
    finally:
        torch.set_num_threads(2)
    torch.save(trainer.distiller.student.state_dict(), Path(out) / f"student_rank{rank}.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fake_fmnist):
    """Two processes (2 epochs); one process with 2 accumulation steps (same global batch);
    two processes stopped after epoch 1 and resumed by one process."""
    tmp = tmp_path_factory.mktemp("ddp")
    teacher = _teacher(fake_fmnist, tmp / "teacher")
    two = _ckd_config(fake_fmnist, tmp / "two", teacher)
    _launch(_train, 2, two, None, False, str(tmp / "two"))
    one = _ckd_config(fake_fmnist, tmp / "one", teacher, optim={"accum_steps": 2})
    _train(0, one, None, False, str(tmp / "one"))
    split = _ckd_config(fake_fmnist, tmp / "split", teacher)
    _launch(_train, 2, split, 1, False, str(tmp / "split"))
    resume = {**split, "optim": {**split["optim"], "accum_steps": 2}}  # same micro-batches
    _train(0, resume, None, True, str(tmp / "split"))
    return tmp


@pytest.mark.slow  # two gloo processes (~15 s with their fixture); CI's slow job runs them
def test_two_processes_end_with_identical_students(runs):
    a = torch.load(runs / "two" / "student_rank0.pt", weights_only=True)
    b = torch.load(runs / "two" / "student_rank1.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _weights(state: dict) -> dict:
    """The learned weights. BN running statistics are left out: with accumulation they are
    updated once per micro-batch, under DDP once per step (from rank 0's share)."""
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k}


@pytest.mark.slow  # two gloo processes (~15 s with their fixture); CI's slow job runs them
def test_two_processes_equal_one_process_with_the_same_global_batch(runs):
    two = _weights(load_checkpoint(runs / "two" / "last.pt")["model"])
    one = _weights(load_checkpoint(runs / "one" / "last.pt")["model"])
    assert two.keys() == one.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow  # two gloo processes (~15 s with their fixture); CI's slow job runs them
def test_only_rank_zero_writes_and_metrics_cover_all_processes(runs):
    import json

    files = sorted(p.name for p in (runs / "two").iterdir() if p.name != ".ckd.lock")
    assert files == [
        "best.pt",
        "config.yaml",
        "last.pt",
        "metrics.jsonl",
        "result.json",
        "student_rank0.pt",
        "student_rank1.pt",
    ]
    result = json.loads((runs / "two" / "result.json").read_text())
    assert result["processes"] == 2
    two = [json.loads(x) for x in (runs / "two" / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(x) for x in (runs / "one" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(two, one, strict=True):  # reduced over ranks = the single process's figures
        assert a["train_ckd"] == pytest.approx(b["train_ckd"], rel=1e-3)
    # the test metrics reduced over the ranks are those of the whole test set: the two-process
    # run's student evaluated in one process (not the one-process run's student, whose BN
    # statistics differ: see _weights)
    whole = evaluate(runs / "two", device="cpu")
    assert two[-1]["test_top1"] == pytest.approx(whole["top1"], abs=1.01)  # under one image
    assert two[-1]["test_loss"] == pytest.approx(whole["loss"], rel=1e-4)


@pytest.mark.slow  # two gloo processes (~15 s with their fixture); CI's slow job runs them
def test_two_process_run_resumed_by_one_process_ends_where_two_do(runs):
    resumed = load_checkpoint(runs / "split" / "last.pt")
    straight = load_checkpoint(runs / "two" / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 2
    for k, v in _weights(straight["model"]).items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
