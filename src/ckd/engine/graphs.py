"""The whole training step as one CUDA graph (``run.cuda_graphs``).

At the CIFAR recipes' batch of 64 a GPU waits on kernel launches, not on arithmetic: a step of
two small networks is many hundreds of kernels of a few microseconds each, every one launched
by Python. :class:`GraphedStep` records the step once — the frozen teacher's forward (unless
its outputs come from a cache), the student's forward, every loss term, the backward and the
SGD update — as a CUDA graph, and then replays it: one launch per step.

What a graph needs, and how the step gives it:

- **Static inputs.** A graph reads fixed addresses: each step's images, targets and sample
  indices (and cached teacher outputs) are copied into buffers made at capture (device-to-device
  and pinned host-to-device copies, asynchronous). Every batch must have one shape (the loaders
  drop a last incomplete batch).
- **No host synchronisation inside the step.** The learning rate is a device tensor read by the
  fused SGD kernel (written before each replay, no sync); ``epoch`` and ``step`` reach the
  methods as 0-dim device tensors (so DKD's and ReviewKD's warm-up factors are computed on the
  device); the loss terms come back as device tensors, summed on the device by the trainer as
  before. fp16's GradScaler (which reads its inf check on the host), several micro-batches per
  step, several processes and methods that synchronise (``Method.graph_unsafe``: KDSVD's SVD)
  are refused in one line when ``run.cuda_graphs=true`` (:func:`graph_obstacle`) and turn
  ``auto`` off.
- **Warm-up.** The first :data:`WARMUP_STEPS` steps run eagerly on a side stream (cuDNN and
  cuBLAS set-up, the optimizer's momentum buffers, CRD's normalisers), then the step is
  captured and replayed from there on. Gradients live in the graph's memory pool and are
  overwritten, not zeroed, by each replay.

The augmentation of the fast loader runs before each replay (about 15 small kernels, launched
while the previous replay still runs). The graph replays what it captured: methods must not
branch in Python on values that change between steps (:class:`~ckd.methods.base.Batch`'s
``epoch`` and ``step`` are tensors here for that reason).

On the CPU there is nothing to capture; :class:`CheckedEagerGraph` stands in for the CUDA graph
in the tests: it runs the same step through the same static buffers, and refuses every
operation that would synchronise a GPU with the host (:class:`NoHostSync`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ckd.config import BaseConfig
from ckd.engine.loaders import MicroBatch
from ckd.methods.base import METHODS, Outputs
from ckd.methods.distiller import Distiller, TeacherSource

#: Eager steps (on a side stream) before the step is captured.
WARMUP_STEPS = 3

#: Operators whose CUDA kernels make the host wait for the device (a value read back, or an
#: output whose size depends on the data), so they cannot be inside a captured graph.
SYNCING_OPS = frozenset(
    {
        "_local_scalar_dense",  # .item(), bool(t), int(t), float(t)
        "nonzero",
        "masked_select",
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "equal",
        "is_nonzero",
        "allclose",
        "_linalg_svd",
        "_linalg_eigh",
        "linalg_eig",
        "_linalg_check_errors",
        "linalg_lstsq",
        "_assert_async",
    }
)


class HostSyncError(RuntimeError):
    """An operation in the step would make the host wait for the device."""


class NoHostSync(TorchDispatchMode):
    """Raises :class:`HostSyncError` on an operator that synchronises a CUDA device with the
    host (:data:`SYNCING_OPS`, boolean-mask indexing, a ``repeat_interleave`` without
    ``output_size``); what a CUDA graph cannot capture, checked on any device."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # torch's own __init__ is unannotated

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in SYNCING_OPS or (name == "repeat_interleave" and "output_size" not in kwargs):
            raise HostSyncError(f"aten.{name} reads the device's data on the host")
        if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
                raise HostSyncError(f"aten.{name} with a boolean mask has a data-dependent size")
        return func(*args, **kwargs)


R = TypeVar("R")


class StepGraph(Protocol):
    """What :class:`GraphedStep` captures the step with: :class:`CudaGraph`, or
    :class:`CheckedEagerGraph` in the tests."""

    #: whether ``capture`` runs ``fn`` (else the first ``replay`` does)
    runs_on_capture: bool

    def capture(self, fn: Callable[[], R]) -> R:
        """Record ``fn``; its outputs, which each :meth:`replay` overwrites."""
        ...

    def replay(self) -> None: ...


class CudaGraph:
    """A CUDA graph: ``capture`` records ``fn`` (running nothing) and returns its outputs,
    which each ``replay`` overwrites."""

    runs_on_capture = False

    def __init__(self) -> None:
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, fn: Callable[[], R]) -> R:
        # thread_local: DataLoader's pin-memory thread may allocate while the step is captured
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            return fn()

    def replay(self) -> None:
        self.graph.replay()


class CheckedEagerGraph:
    """A stand-in for :class:`CudaGraph` on any device (tests): ``capture`` runs ``fn`` once
    (the step it was asked to capture) and ``replay`` runs it again, copying its outputs into
    those of the capture; both under :class:`NoHostSync`."""

    runs_on_capture = True

    def capture(self, fn: Callable[[], Any]) -> Any:
        self.fn = fn
        with NoHostSync():
            self.outputs = fn()
        return self.outputs

    def replay(self) -> None:
        with NoHostSync():
            fresh = self.fn()
        for static, new in zip(_tensors(self.outputs), _tensors(fresh), strict=True):
            static.copy_(new)


def _tensors(tree: Any) -> Iterator[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, tuple | list):
        for item in tree:
            yield from _tensors(item)


def _outputs_tensors(out: Outputs) -> list[torch.Tensor]:
    return [out.logits, *out.feats, *([out.embedding] if out.embedding is not None else [])]


def _outputs_like(out: Outputs, tensors: list[torch.Tensor]) -> Outputs:
    n = len(out.feats)
    embedding = tensors[1 + n] if out.embedding is not None else None
    return Outputs(tensors[0], tuple(tensors[1 : 1 + n]), embedding)


@contextlib.contextmanager
def _tensor_lr(optimizer: torch.optim.Optimizer, lr: torch.Tensor) -> Iterator[None]:
    """The param groups' learning rate as the device tensor ``lr`` while the optimizer steps
    (captured by the fused kernel), the float again afterwards (for checkpoints)."""
    saved = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = lr
    try:
        yield
    finally:
        for g, value in zip(optimizer.param_groups, saved, strict=True):
            g["lr"] = value


class GraphedStep:
    """The trainer's optimisation step, captured once and replayed (module docstring).

    ``graph`` makes the graph (default: :class:`CudaGraph` on CUDA, :class:`CheckedEagerGraph`
    elsewhere, which only tests reach); ``warmup`` eager steps come first. Called like
    ``Trainer.train_step`` with one micro-batch and the teacher's source for it; returns
    ``[(logits, terms)]``, logits being the graph's own output (valid until the next step) and
    terms fresh tensors.
    """

    def __init__(
        self,
        distiller: Distiller,
        optimizer: torch.optim.Optimizer,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]],
        device: torch.device,
        graph: Callable[[], StepGraph] | None = None,
        warmup: int = WARMUP_STEPS,
    ) -> None:
        self.distiller, self.optimizer, self.autocast = distiller, optimizer, autocast
        self.device, self.warmup = device, warmup
        self.make_graph: Callable[[], StepGraph] = graph or (
            CudaGraph if device.type == "cuda" else CheckedEagerGraph
        )
        for group in optimizer.param_groups:  # a resumed checkpoint may have said otherwise
            group["fused"], group["foreach"] = True, False  # the kernel that reads a tensor lr
        self.lr = torch.zeros((), dtype=torch.float32, device=device)
        self.epoch = torch.zeros((), dtype=torch.float32, device=device)
        self.step = torch.zeros((), dtype=torch.float32, device=device)
        self.graph: StepGraph | None = None
        self.steps = 0
        self.static: list[torch.Tensor] = []  # inputs, targets, index, teacher tensors
        self.out: tuple[torch.Tensor, torch.Tensor] | None = None
        self.names: list[str] = []

    # ------------------------------------------------------------------ the step itself
    def _run(
        self, inputs: Any, targets: Any, index: torch.Tensor, teacher: Outputs | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss, backward and SGD update; (logits, stacked terms) detached."""
        with self.autocast():
            logits, terms = self.distiller.forward_train(
                inputs,
                targets,
                teacher=teacher,
                epoch=self.epoch,
                step=self.step,
                index=index,
                gather=None,
            )
        self.names = list(terms)
        values = torch.stack([t.float() for t in terms.values()])
        values.sum().backward()
        with _tensor_lr(self.optimizer, self.lr):
            self.optimizer.step()
        return logits.detach(), values.detach()

    def _side_stream(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        return _on_stream(stream, self.device)

    def _batch(self, mb: MicroBatch, teacher: Outputs | None) -> list[torch.Tensor]:
        index = mb.index.to(self.device, non_blocking=True)
        return [mb.inputs, mb.targets, index, *(_outputs_tensors(teacher) if teacher else [])]

    def _capture(self, tensors: list[torch.Tensor], teacher: Outputs | None) -> None:
        self.static = [t.clone() for t in tensors]
        s = self.static
        static_teacher = _outputs_like(teacher, s[3:]) if teacher is not None else None

        def step() -> tuple[torch.Tensor, torch.Tensor]:
            # gradients: allocated by the captured backward, overwritten (not summed) by replays
            self.optimizer.zero_grad(set_to_none=True)
            return self._run(s[0], s[1], s[2], static_teacher)

        self.graph = graph = self.make_graph()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        try:
            self.out = graph.capture(step)
        except (RuntimeError, HostSyncError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(
                f"run.cuda_graphs: the training step could not be captured ({reason[:200]}); "
                "a method may synchronise with the host or change shape between steps: set "
                "run.cuda_graphs=false"
            ) from e
        if not graph.runs_on_capture:
            graph.replay()

    def _load(self, tensors: list[torch.Tensor]) -> None:
        for static, new in zip(self.static, tensors, strict=True):
            if static.shape != new.shape:
                raise RuntimeError(
                    f"run.cuda_graphs: a batch of shape {tuple(new.shape)} after capturing "
                    f"{tuple(static.shape)}; every batch of a graphed run must have one shape"
                )
            static.copy_(new, non_blocking=True)

    def __call__(
        self,
        micro_batches: list[MicroBatch],
        source: TeacherSource,
        lr: float,
        epoch: int,
        step: int,
    ) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """One step on the single micro-batch of ``micro_batches``; ``source`` is its
        :data:`~ckd.methods.distiller.TeacherSource` (None: the live teacher, inside the graph)."""
        if len(micro_batches) != 1:
            raise RuntimeError("run.cuda_graphs captures one micro-batch per step")
        (mb,) = micro_batches
        teacher = source() if callable(source) else source
        for tensor, value in ((self.lr, lr), (self.epoch, epoch), (self.step, step)):
            tensor.fill_(value)
        tensors = self._batch(mb, teacher)
        if self.graph is None and self.steps < self.warmup:
            self.optimizer.zero_grad(set_to_none=True)
            with self._side_stream():
                logits, values = self._run(mb.inputs, mb.targets, tensors[2], teacher)
        else:
            if self.graph is None:
                self._capture(tensors, teacher)
            else:
                self._load(tensors)
                self.graph.replay()
            assert self.out is not None
            logits, values = self.out[0], self.out[1].clone()
        self.steps += 1
        return [(logits, dict(zip(self.names, values.unbind(), strict=True)))]


@contextlib.contextmanager
def _on_stream(stream: torch.cuda.Stream, device: torch.device) -> Iterator[None]:
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream(device).wait_stream(stream)


def graph_obstacle(cfg: BaseConfig, fixed_shapes: bool) -> str | None:
    """Why ``cfg`` cannot run as a captured CUDA graph, whatever the machine (None: it can);
    ``fixed_shapes``: whether its task's batches all have one shape
    (:attr:`~ckd.engine.task.Task.fixed_shapes`). The device and the number of processes are
    checked when the run starts (:meth:`~ckd.engine.runtime.Runtime.start`)."""
    r = cfg.run
    if not fixed_shapes:
        return f"{cfg.task} batches change shape from step to step, which a graph cannot replay"
    if r.amp == "fp16":
        return "fp16's grad scaler reads its overflow check on the host; use run.amp=bf16"
    if cfg.optim.accum_steps != 1:
        return "one micro-batch per step is captured; set optim.accum_steps=1"
    if r.compile == "reduce-overhead":
        return "run.compile=reduce-overhead makes CUDA graphs of its own; use one or the other"
    for part in cfg.method.parts():
        cls = METHODS.get(part.name)
        if cls.graph_unsafe:
            return f"method {part.name!r} cannot be captured: {cls.graph_unsafe}"
    return None
