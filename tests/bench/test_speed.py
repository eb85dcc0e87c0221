"""``ckd bench speed``: the rough edges it had, the graphed paths (through the graphs' CPU
stand-in), and the official code's step beside ours (``--reference``, here a stand-in package
with the official code's layout: the real one is not shipped)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

import ckd.engine.runtime as runtime
from ckd.bench.speed import bench_speed, format_report
from ckd.bench.timing import BenchSpec
from ckd.cli import build_parser, main

TINY = ["--teacher", "resnet8", "--student", "resnet8", "--batch-size", "16", "--workers", "0"]
TINY += ["--rounds", "1", "--no-memory"]


def test_one_step_without_warm_up_reports_and_says_what_it_cannot(tmp_path, capsys):
    out = tmp_path / "b.json"
    args = ["bench", "speed", *TINY, "--steps", "1", "--warmup", "0", "--classes", "10"]
    assert main([*args, "--variants", "fast:ckd,fast:kd", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CKD step vs KD step, (b) fast" in text
    assert "no interleaved steps (needs --steps + --warmup >= 2)" in text
    assert {r["path"] for r in json.loads(out.read_text())["rows"]} == {"fast"}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--classes", "2"], "--classes must be 10 or 100"),
        (["--variants", "fast-graphs:ckd"], "needs a CUDA device; this benchmark runs on cpu"),
        (["--variants", "reference:ckd"], "needs --reference PATH"),
        (["--reference", "/nonexistent"], "is not a checkout of the official CKD code"),
        (["--variants", "cache:vanilla"], "has no teacher to cache"),
    ],
)
def test_bad_arguments_are_one_line_before_any_work(flags, message, capsys):
    assert main(["bench", "speed", "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ckd: error: ") and message in err and len(err.splitlines()) == 1


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["bench", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: resnet56)" in text and "(default: 15)" in text and "--reference" in text


def test_graphed_variants_are_captured_before_the_rounds(tmp_path, monkeypatch):
    """With graphs on (their CPU stand-in here), the warm-up and capture happen in untimed
    steps before the rounds and are reported apart, so even one timed step is a replay."""
    monkeypatch.setattr(runtime, "cuda_graphs_enabled", lambda setting, *a: setting is not False)
    spec = BenchSpec("resnet8", "resnet8", 16, 1, 0, 1, 10, 0, "cpu")
    result = bench_speed(spec, (("fast", "ckd"), ("fast-graphs", "ckd")), memory=False)
    assert set(result["prime_s"]) == {"fast-graphs/ckd"}
    assert result["settings"]["fast-graphs/ckd"]["graphs"]
    assert not result["settings"]["fast/ckd"]["graphs"]
    text = format_report(result)
    assert "(b*) fast, CUDA graph" in text and "captured before timing" in text


STAND_IN = {
    "mdistiller/__init__.py": "",
    "mdistiller/dataset/__init__.py": "",
    "mdistiller/dataset/cifar100.py": """
        from torchvision import datasets, transforms

        class CIFAR100Instance(datasets.CIFAR100):
            def __getitem__(self, index):
                img, target = super().__getitem__(index)
                return img, target, index

        def get_cifar100_train_transform():
            return transforms.Compose(
                [transforms.RandomCrop(32, padding=4), transforms.ToTensor()]
            )
        """,
    "mdistiller/distillers/__init__.py": """
        import torch
        import torch.nn.functional as F

        class Distiller(torch.nn.Module):
            def __init__(self, student, teacher, cfg):
                super().__init__()
                self.student, self.teacher, self.kind = student, teacher, cfg.DISTILLER.TYPE

            def get_learnable_parameters(self):
                return list(self.student.parameters())

            def forward(self, image, target, **kwargs):
                logits = self.student(image)
                CALLS.append((self.kind, image.shape[0]))
                return logits, {"ce": F.cross_entropy(logits, target)}

        CALLS = []
        distiller_dict = {"CKD": Distiller, "KD": Distiller}
        """,
    "mdistiller/engine/__init__.py": "",
    "mdistiller/engine/cfg.py": """
        import copy
        from types import SimpleNamespace as N

        class Node(N):
            def clone(self):
                return copy.deepcopy(self)

        CFG = Node(DISTILLER=N(TYPE="NONE"), SOLVER=N(BATCH_SIZE=64, LR=0.05))
        """,
    "mdistiller/engine/utils.py": """
        class AverageMeter:
            def update(self, val, n=1):
                pass
        """,
    "mdistiller/engine/trainer.py": """
        import torch

        class BaseTrainer:
            def init_optimizer(self, cfg):
                params = self.distiller.module.get_learnable_parameters()
                return torch.optim.SGD(params, lr=cfg.SOLVER.LR), None

            def train_iter(self, data, epoch, meters):
                self.optimizer.zero_grad()
                image, target, index = data
                image, target = image.float().cuda(non_blocking=True), target.cuda()
                preds, losses = self.distiller(image=image, target=target, epoch=epoch)
                sum(l.mean() for l in losses.values()).backward()
                self.optimizer.step()
        """,
    "mdistiller/models/__init__.py": """
        from ckd.models import create_model

        def _zoo(name):
            return lambda num_classes: create_model(name, num_classes)

        cifar_model_dict = {"resnet8": (_zoo("resnet8"), None)}
        """,
}


@pytest.fixture
def clean_imports(monkeypatch):
    """The stand-in ``mdistiller`` leaves neither sys.path nor sys.modules changed."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [m for m in sys.modules if m == "mdistiller" or m.startswith("mdistiller.")]:
        del sys.modules[name]


def test_the_reference_step_is_timed_beside_ours(tmp_path, capsys, clean_imports):
    """``--reference PATH`` imports the official code's pieces from PATH (its models, its
    distillers, its trainer's ``train_iter`` on its CIFAR-100 dataset class) and times its step
    in the same rounds, with a ``vs (r)`` column; on the CPU its ``.cuda()`` calls stay on the
    CPU."""
    for name, text in STAND_IN.items():
        path = tmp_path / "ref" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    args = ["bench", "speed", *TINY, "--steps", "2", "--warmup", "1", "--device", "cpu"]
    args += ["--reference", str(tmp_path / "ref"), "--variants", "reference:ckd,fast:ckd"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "| (r) official CKD code | CKD |" in text and "vs (r)" in text
    from mdistiller.distillers import CALLS  # imported from the checkout by the benchmark

    assert CALLS and all(c == ("CKD", 16) for c in CALLS)
    assert main([*args[:-2], "--variants", "reference:dkd"]) == 2
    assert "the reference step is timed for ckd, kd" in capsys.readouterr().err
