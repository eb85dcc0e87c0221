"""Figures: class-correlation difference, t-SNE, bars and curves through the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from ckd.bench.viz import class_correlation, correlation_difference
from ckd.cli import main
from ckd.config import config_from_dict
from ckd.engine import Trainer
from tests.conftest import tiny_config


def test_correlation_difference_is_zero_for_the_same_logits_and_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 10)), rng.normal(size=(200, 10))
    assert np.allclose(correlation_difference(a, a), 0.0)
    d = correlation_difference(a, b)
    assert d.shape == (10, 10) and np.allclose(d, d.T) and np.allclose(np.diag(d), 0.0)
    assert np.allclose(class_correlation(a * 3.0 + 1.0), class_correlation(a))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fake_fmnist):
    out = tmp_path_factory.mktemp("viz") / "run"
    Trainer(
        config_from_dict(tiny_config(fake_fmnist, out, optim={"epochs": 1})), echo=lambda _: None
    ).fit()
    return out


@pytest.mark.parametrize("kind", ["corr", "tsne", "curves", "bars"])
def test_plot_commands_write_pngs(kind, run_dir, tmp_path, capsys):
    ckpt = str(run_dir / "last.pt")
    out = tmp_path / f"{kind}.png"
    args = {
        "corr": [ckpt, ckpt, "--subset", "100", "--device", "cpu"],
        "tsne": [ckpt, "--subset", "100", "--device", "cpu"],
        "curves": [str(run_dir)],
        "bars": [str(run_dir)],
    }[kind]
    assert main(["plot", kind, *args, "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.stat().st_size > 5_000
    if kind == "corr":
        assert "mean |corr(teacher) - corr(student)| = 0.0000" in capsys.readouterr().out


def test_report_command_and_missing_runs(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r")]) == 0
    assert "| vanilla | resnet8 | 1 |" in (tmp_path / "r" / "report.md").read_text()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no finished runs" in capsys.readouterr().err
