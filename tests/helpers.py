"""Helpers several test modules share (no test module imports another): the command line's
one-line refusals, a torchrun-like launch of processes, and random-weight models saved as
teacher files."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from ckd.cli import main
from ckd.engine.distributed import shutdown
from ckd.models import create_model

# --------------------------------------------------------------------------- the command line


def run_bad(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckd: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(fn, world: int, *args) -> None:
    """Run ``fn(rank, *args)`` in ``world`` processes with torchrun's environment variables."""
    port = _free_port()
    mp.start_processes(_entry, args=(fn, world, port, args), nprocs=world, start_method="spawn")


def _entry(rank: int, fn, world: int, port: int, args) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    try:
        fn(rank, *args)
    finally:
        shutdown()


# --------------------------------------------------------------------------- training runs

NOT_TERMS = {"train_loss", "train_top1", "train_time_s"}


def quiet(_msg: str) -> None:
    pass


def save_random(name: str, path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random-weight 10-class, 1-channel model saved as ``{"model": state_dict}``."""
    torch.manual_seed(seed)
    sd = {k: v.clone() for k, v in create_model(name, 10, in_channels=1).state_dict().items()}
    torch.save({"model": sd}, path)
    return sd


def assert_same_state(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():  # weights and BN buffers (running stats, counters)
        assert torch.equal(state[key].cpu(), value), key
