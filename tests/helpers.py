"""Helpers several test modules share (no test module imports another): the command line's
one-line refusals, a torchrun-like launch of processes, ``ckd`` commands in processes forked
from a server (:class:`Forks`), and random-weight models saved as teacher files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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


# --------------------------------------------------------------------------- forked commands

SERVER = r"""
import json, os, sys, traceback
import ckd.cli, ckd.config, ckd.engine, ckd.tasks.classification  # what every run imports
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.environ.update(job["env"])
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(job["cwd"])
            exec(job["prelude"])
            code = ckd.cli.main(job["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
"""


class Forks:
    """Runs ``ckd`` commands in processes forked from a server that imported ckd once."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = folder, 0
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        env.pop("CKD_FAULT", None)
        self.server = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=folder,
        )

    def run(
        self, *argv: str, fault: str | None = None, sig: str | None = None, prelude: str = ""
    ) -> tuple[int, str]:
        """``ckd ARGV`` in a fresh process: (exit code, negative for a signal; its output)."""
        self.count += 1
        log = self.folder / f"run{self.count}.log"
        env = {"CKD_FAULT": fault or "", "CKD_FAULT_SIGNAL": sig or "KILL"}
        job = {"argv": list(argv), "env": env, "log": str(log), "cwd": str(self.folder)}
        job["prelude"] = prelude
        assert self.server.stdin is not None and self.server.stdout is not None
        self.server.stdin.write(json.dumps(job) + "\n")
        self.server.stdin.flush()
        code = json.loads(self.server.stdout.readline())
        return code, log.read_text()

    def close(self) -> None:
        assert self.server.stdin is not None
        self.server.stdin.close()
        self.server.wait(timeout=60)


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
