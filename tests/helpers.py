"""Helpers several test modules share (no test module imports another): the command line's
one-line refusals and a torchrun-like launch of processes."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

from ckd.cli import main
from ckd.engine.distributed import shutdown

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
