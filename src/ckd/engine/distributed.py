"""Distributed data-parallel training with ``torchrun``: the process group, this process's share
of each batch, and the collectives the trainer and methods use.

One run is one global batch per optimisation step (``data.batch_size``), whatever the number of
processes: each global batch (drawn from the epoch's seeded order, the same on every rank) is cut
into ``world_size x accum_steps`` equal micro-batches, rank ``r`` taking pieces
``r * accum_steps ... (r + 1) * accum_steps - 1`` in turn. Two processes, or one process with
``optim.accum_steps=2``, therefore see the same samples per step; a run can be resumed with
another number of processes.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them (a plain ``ckd
train``) everything here is the single-process identity.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ckd.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run. ``group``: in a process group (a torchrun launch, of
    one process too, which then runs through DDP and the backend like several do)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.group or self.world_size > 1

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over all ranks (in place, and returned)."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BN running statistics) to every rank, so that all ranks evaluate
        and hold the model rank 0 saves (each rank updated them on its own share)."""
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``[W * B, ...]``: ``x`` ``[B, ...]`` of every rank, concatenated in rank order. The
        gradient of each rank's slice flows back to that rank (summed over the ranks' losses,
        which DDP's gradient averaging turns into the gradient of one loss over the global
        batch). Every rank must give the same ``B``."""
        if not self.distributed:
            return x
        gathered: torch.Tensor = _GatherWithGrad.apply(x)
        return gathered


#: The context of a single process (no process group).
SINGLE = DistContext()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rank, ctx.size = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def main_only(ctx: DistContext, echo: Callable[[str], None]) -> Callable[[str], None]:
    """``echo`` on rank 0; a function that prints nothing on the other ranks."""
    return echo if ctx.is_main else _silent


def _silent(_: str) -> None:
    pass


def context_from_env() -> DistContext:
    """The ranks ``torchrun`` put in the environment (a single process when there are none)."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return SINGLE
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ConfigError(f"torchrun environment: {e}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"torchrun environment: RANK={rank} with WORLD_SIZE={world}")
    return DistContext(rank, world, local, group=True)


def init_distributed(backend: str, device_setting: str) -> tuple[DistContext, str]:
    """Join the process group when ``torchrun`` started this process; returns the context and
    this rank's device setting (``cuda:LOCAL_RANK`` on GPUs).

    ``backend``: ``auto`` (NCCL with CUDA, gloo otherwise), ``nccl`` or ``gloo``.
    """
    ctx = context_from_env()
    if not ctx.distributed:
        return ctx, device_setting
    cuda = device_setting.startswith("cuda") or (
        device_setting == "auto" and torch.cuda.is_available()
    )
    if cuda:
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device: {device_setting!r} but CUDA is not available")
        if ctx.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={ctx.local_rank} but this node has {torch.cuda.device_count()} "
                "CUDA device(s): start at most one process per GPU (torchrun --nproc-per-node)"
            )
        device_setting = f"cuda:{ctx.local_rank}"
        torch.cuda.set_device(ctx.local_rank)
    elif device_setting == "auto":
        device_setting = "cpu"
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise ConfigError("run.dist_backend: 'nccl' needs CUDA devices; use gloo on the CPU")
    if not dist.is_initialized():
        device_id = torch.device(device_setting) if backend == "nccl" else None
        dist.init_process_group(
            backend, rank=ctx.rank, world_size=ctx.world_size, device_id=device_id
        )
    return ctx, device_setting


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def my_pieces(batch: torch.Tensor, ctx: DistContext, accum_steps: int) -> Sequence[torch.Tensor]:
    """This rank's ``accum_steps`` micro-batches of one global batch (of indices)."""
    pieces = torch.tensor_split(batch, ctx.world_size * accum_steps)
    return pieces[ctx.rank * accum_steps : (ctx.rank + 1) * accum_steps]


def shard(n: int, ctx: DistContext) -> torch.Tensor:
    """Positions ``0..n-1`` of this rank's contiguous share (for evaluation: every sample once)."""
    return torch.tensor_split(torch.arange(n), ctx.world_size)[ctx.rank]


class MicroBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Index lists of this rank's micro-batches for one epoch: a fresh order from ``generator``
    (drawn when iterated, like ``RandomSampler``), cut into global batches of ``batch_size``
    (a last incomplete one dropped when ``drop_last``), each cut by :func:`my_pieces`; the
    global batches from number ``start`` on (a resumed epoch skips what it trained on)."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        generator: torch.Generator,
        drop_last: bool,
        ctx: DistContext,
        accum_steps: int = 1,
        start: int = 0,
    ) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.drop_last, self.ctx, self.accum_steps = drop_last, ctx, accum_steps
        self.start = start

    def steps(self) -> int:
        """Optimisation steps (global batches) per epoch."""
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return (self.steps() - self.start) * self.accum_steps

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=self.generator)
        for step in range(self.start, self.steps()):
            batch = order[step * self.batch_size : (step + 1) * self.batch_size]
            for piece in my_pieces(batch, self.ctx, self.accum_steps):
                yield piece.tolist()


def check_split(batch_size: int, ctx: DistContext, accum_steps: int) -> None:
    """The global batch must cut into equal micro-batches (the gathered CKD negatives and DDP's
    gradient average assume equal shares)."""
    parts = ctx.world_size * accum_steps
    if batch_size % parts:
        raise ConfigError(
            f"data.batch_size={batch_size} (the global batch) must be a multiple of "
            f"processes x optim.accum_steps = {ctx.world_size} x {accum_steps} = {parts}"
        )
