"""Speed settings that change how a step runs, not what it computes: bf16 autocast on CPUs
that have native bf16 (``run.amp=auto``), and the training step as a captured CUDA graph
(``run.cuda_graphs``).

No GPU is needed: the CPU flags are mocked, and the graphed step runs through the stand-in
that replays the step through the same static buffers and refuses every operator that would
make a GPU wait for the host (``CheckedEagerGraph``)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

import ckd.engine.runtime as runtime
from ckd.cli import main
from ckd.config import config_from_dict
from ckd.engine import Trainer
from ckd.engine.graphs import (
    CheckedEagerGraph,
    GraphedStep,
    HostSyncError,
    NoHostSync,
)
from ckd.errors import ConfigError
from ckd.methods import METHODS
from tests.conftest import tiny_config

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c\n"
SAPPHIRE = "flags\t: avx2 avx512f amx_bf16 amx_tile amx_int8\n"


def quiet(_msg: str) -> None:
    pass


# --------------------------------------------------------------------------- bf16 on the CPU


@pytest.mark.parametrize(
    "cpuinfo, native",
    [(ZEN4, True), (SAPPHIRE, True), (ZEN3, False), ("", False), ("model name : x\n", False)],
)
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    assert runtime.native_bf16(runtime.cpu_flags(cpuinfo)) is native


def test_this_machine_has_an_answer_and_the_environment_can_overrule_it(monkeypatch):
    assert isinstance(runtime.native_bf16(runtime.cpu_flags()), bool)  # whatever the CPU
    monkeypatch.setenv("CKD_CPU_BF16", "1")
    assert runtime.native_bf16() and runtime.amp_dtype("auto", torch.device("cpu"))
    monkeypatch.setenv("CKD_CPU_BF16", "0")
    assert not runtime.native_bf16() and runtime.amp_dtype("auto", torch.device("cpu")) is None


@pytest.mark.parametrize("cpuinfo, expected", [(ZEN4, torch.bfloat16), (ZEN3, None)])
def test_amp_auto_on_the_cpu_is_bf16_only_with_native_bf16(monkeypatch, cpuinfo, expected):
    monkeypatch.delenv("CKD_CPU_BF16")
    monkeypatch.setattr(runtime, "_machine_flags", lambda: runtime.cpu_flags(cpuinfo))
    cpu = torch.device("cpu")
    assert runtime.amp_dtype("auto", cpu) is expected
    assert runtime.amp_dtype("none", cpu) is None  # the explicit settings do not look
    assert runtime.amp_dtype("bf16", cpu) is torch.bfloat16


def test_a_bf16_cpu_trains_under_bf16_autocast_with_fp32_losses(monkeypatch, fake_fmnist, tmp_path):
    """With the flags of a bf16 CPU, ``run.amp=auto`` trains under bf16 autocast (on any CPU:
    without the instructions it is only slower) and the loss terms stay float32."""
    monkeypatch.delenv("CKD_CPU_BF16")
    monkeypatch.setattr(runtime, "_machine_flags", lambda: runtime.cpu_flags(ZEN4))
    cfg = tiny_config(fake_fmnist, tmp_path / "run", data={"train_subset": 64}, optim={"epochs": 1})
    trainer = Trainer(config_from_dict(cfg), echo=quiet)
    assert trainer.runtime.amp is torch.bfloat16
    assert trainer.runtime.describe().startswith(
        "precision bf16 autocast (run.amp=auto: this CPU computes bf16 natively), memory format "
    )
    seen = []
    student = trainer.distiller.student
    student.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    (mb,) = next(iter(trainer.task.loader.epoch(0)))
    [(logits, terms)] = trainer.train_step([mb], 0, 0, 0.05)
    assert seen == [torch.bfloat16]
    assert all(t.dtype == torch.float32 and math.isfinite(t.item()) for t in terms.values())


# --------------------------------------------------------------------------- CUDA graphs


def write(path, cfg) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"run": {"amp": "fp16"}}, "fp16's grad scaler"),
        ({"optim": {"accum_steps": 2}}, "set optim.accum_steps=1"),
        ({"method": {"name": "kdsvd"}}, "method 'kdsvd' cannot be captured"),
        ({"run": {"compile": "reduce-overhead"}}, "CUDA graphs of its own"),
    ],
)
def test_cuda_graphs_true_is_refused_in_one_line_where_it_cannot_work(
    sections, message, fake_fmnist, tmp_path, capsys, teacher_file
):
    cfg = tiny_config(fake_fmnist, tmp_path / "run", run={"cuda_graphs": True})
    for key, value in sections.items():
        cfg[key] |= value
    if cfg["method"]["name"] != "vanilla":
        cfg["teacher"] = {"name": "resnet8", "checkpoint": str(teacher_file)}
    assert main(["train", write(tmp_path / "c.yaml", cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ckd: error: run.cuda_graphs=true: ") and message in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_cuda_graphs_need_a_cuda_device_and_auto_is_off_without_one(fake_fmnist, tmp_path, capsys):
    cfg = tiny_config(fake_fmnist, tmp_path / "run", run={"cuda_graphs": True})
    assert main(["train", write(tmp_path / "c.yaml", cfg)]) == 2
    err = capsys.readouterr().err
    assert "run.cuda_graphs=true: it needs a CUDA device; this run is on cpu" in err
    assert not (tmp_path / "run").exists()
    cfg["run"]["cuda_graphs"] = "auto"
    trainer = Trainer(config_from_dict(cfg), echo=quiet)
    assert not trainer.runtime.cuda_graphs and trainer.graphed is None
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        runtime.Runtime.start(
            config_from_dict({**cfg, "run": {**cfg["run"], "compile": "reduce-overhead"}}).run,
            32,
            1,
        )


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    from ckd.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pt"
    torch.save({"model": create_model("resnet8", 10, in_channels=1).state_dict()}, path)
    return path


def test_no_host_sync_refuses_what_a_graph_cannot_capture():
    x = torch.randn(8)
    with NoHostSync():
        y = (x * 2).sum() + x[torch.tensor([0, 3])].mean()  # fine: no value read on the host
        for bad in (
            lambda: y.item(),
            lambda: bool(y > 0),
            lambda: x[x > 0],
            lambda: torch.nonzero(x),
            lambda: torch.linalg.svd(x.view(2, 4)),
        ):
            with pytest.raises(HostSyncError):
                bad()


def graph_config(fake_fmnist, tmp_path, method, teacher_file, **extra):
    cfg = tiny_config(
        fake_fmnist,
        tmp_path,
        method={"name": method},
        data={"train_subset": 96, "loader": "fast", **extra.pop("data", {})},
        optim={"epochs": 1, "lr": 0.05, "schedule": "cosine"},
        run={"amp": "none", "eval_teacher": False, **extra.pop("run", {})},
    )
    if METHODS.get(method).needs_teacher:
        cfg["teacher"] = {"name": "resnet8", "checkpoint": str(teacher_file)}
    return config_from_dict(cfg)


def losses(trainer, steps: int) -> list[dict[str, float]]:
    out = []
    epoch, done = 0, 0
    while done < steps:
        for micro_batches in trainer.task.loader.epoch(epoch):
            lr = trainer.schedule(done)
            [(logits, terms)] = trainer.train_step(micro_batches, epoch, done, lr)
            trainer.task.train_stats(logits, micro_batches[0].targets)
            out.append({k: v.item() for k, v in terms.items()})
            done += 1
            if done == steps:
                break
        epoch += 1
    return out


GRAPHED = [m for m in METHODS.names() if not METHODS.get(m).graph_unsafe]


@pytest.mark.parametrize("method", GRAPHED)
def test_a_graphed_step_syncs_nothing_and_trains_as_the_eager_one(
    method, fake_fmnist, tmp_path, teacher_file, monkeypatch
):
    """Every method that does not declare itself unsafe runs its whole step (after the eager
    warm-up) without one operator that would make a GPU wait for the host, and the graphed
    run's losses follow the eager run's (fused SGD with a tensor learning rate against the
    default SGD: float rounding apart)."""
    torch.manual_seed(0)
    eager = Trainer(graph_config(fake_fmnist, tmp_path / "eager", method, teacher_file), echo=quiet)
    expected = losses(eager, 6)

    monkeypatch.setattr(runtime, "cuda_graphs_enabled", lambda *a: True)
    torch.manual_seed(0)
    trainer = Trainer(
        graph_config(fake_fmnist, tmp_path / "graph", method, teacher_file), echo=quiet
    )
    assert trainer.runtime.cuda_graphs and isinstance(trainer.graphed, GraphedStep)
    assert trainer.optimizer.param_groups[0]["fused"]
    trainer.graphed.warmup = 2
    got = losses(trainer, 6)
    assert isinstance(trainer.graphed.graph, CheckedEagerGraph)  # captured at step 3
    for step, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-5), (step, k, a, b)
    # the optimizer's learning rate stays a float (checkpoints), the last step's
    assert isinstance(trainer.optimizer.param_groups[0]["lr"], float)


def test_a_graphed_step_reads_new_batches_lr_and_epoch_from_its_buffers(
    fake_fmnist, tmp_path, teacher_file, monkeypatch
):
    """After capture, each step's batch, learning rate and epoch reach the step through the
    static buffers (a warm-up method's factor follows the epoch), and a batch of another
    shape is refused in one line."""
    monkeypatch.setattr(runtime, "cuda_graphs_enabled", lambda *a: True)
    cfg = graph_config(fake_fmnist, tmp_path, "dkd", teacher_file)
    trainer = Trainer(cfg, echo=quiet)
    g = trainer.graphed
    g.warmup = 0
    batches = [mbs for e in range(2) for mbs in trainer.task.loader.epoch(e)]
    g(batches[0], None, 0.1, 0, 0)  # captured here
    static_images = g.static[0]
    g(batches[1], None, 0.2, 4, 7)
    assert torch.equal(static_images, batches[1][0].inputs)
    assert g.lr.item() == pytest.approx(0.2) and g.epoch.item() == 4 and g.step.item() == 7
    small = batches[2][0]._replace(inputs=batches[2][0].inputs[:5])
    with pytest.raises(RuntimeError, match="every batch of a graphed run must have one shape"):
        g([small], None, 0.1, 0, 0)


def test_the_fast_path_with_cache_is_graphed_with_the_cached_logits_as_inputs(
    fake_fmnist, tmp_path, teacher_file, monkeypatch
):
    monkeypatch.setattr(runtime, "cuda_graphs_enabled", lambda *a: True)
    cfg = graph_config(
        fake_fmnist,
        tmp_path / "run",
        "ckd",
        teacher_file,
        run={"teacher_cache": str(tmp_path / "cache")},
    )
    trainer = Trainer(cfg, echo=quiet)
    trainer.graphed.warmup = 1
    result = trainer.fit()
    assert result["finished"] and math.isfinite(result["last_top1"])
    assert len(trainer.graphed.static) == 4  # images, targets, index, cached logits
