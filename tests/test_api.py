"""The Python API (``ckd.train``, ``ckd.evaluate``, ``ckd.load_student``): the README's example
runs as it is written, and a run's student, result and test set are the run's own."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ckd
from ckd.data import make_fake_fashion_mnist
from ckd.engine.checkpoint import load_checkpoint
from ckd.errors import ConfigError
from tests.conftest import tiny_config

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_api_block() -> str:
    text = README.read_text()
    block = re.search(r"## Train from Python\n.*?```python\n(.*?)```", text, re.S)
    assert block, "the README's Python API example is gone"
    return block.group(1)


def quiet(_line: str) -> None:
    pass


@pytest.mark.slow  # three short trainings of resnet20 / resnet8 on 500 images
def test_the_readme_example_runs_and_gives_the_runs_own_student(tmp_path, monkeypatch):
    root = make_fake_fashion_mnist(tmp_path / "fmnist", n_train=500, n_test=300)
    monkeypatch.setattr("ckd.data.fashion_mnist.FASHION_MNIST_SEARCH_PATHS", (str(root),))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_api_block(), "README.md", "exec"), scope)

    run = scope["run"]
    assert run.out_dir == Path("runs/api/ckd") and run.checkpoint == run.out_dir / "last.pt"
    assert run.result == json.loads((run.out_dir / "result.json").read_text())
    assert run.result["finished"] and run.result["method"] == "ckd"
    assert run.config.method.name == "ckd" and run.config.optim.epochs == 1
    assert run.config.teacher.checkpoint == str(scope["teacher"].checkpoint)
    # the student is the trained one, in eval mode, and the README's later load is the same
    saved = load_checkpoint(run.checkpoint)["model"]
    student = run.student
    assert not student.training
    for key, value in student.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    later = scope["student"]
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(later(x), student(x))
    assert run.info.classes[0] == "T-shirt/top" and run.info.image_size == 32
    # evaluate measures on the run's own test subset: the run's own last accuracy
    measured = ckd.evaluate(run.out_dir)
    assert measured["n"] == 200 and "the run's test subset" in measured["test_set"]
    assert measured["top1"] == pytest.approx(run.result["last_top1"])


def test_train_from_a_dict_stops_and_resumes_from_the_run_folder(fake_fmnist, tmp_path):
    config = tiny_config(fake_fmnist, tmp_path / "elsewhere", data={"train_subset": 96})
    # overrides apply over a dict as over a file (here: the run folder and the schedule)
    stopped = ckd.train(
        config, ["optim.epochs=2", f"run.out_dir={tmp_path / 'run'}"], stop_after=1, quiet=True
    )
    assert not stopped.result["finished"] and stopped.result["epochs"] == 1
    assert stopped.out_dir == tmp_path / "run" and not (tmp_path / "elsewhere").exists()
    lines: list[str] = []
    done = ckd.train(tmp_path / "run", resume=True, echo=lines.append)  # its saved config
    assert done.result["finished"] and done.result["epochs"] == 2
    assert any("resuming from" in line and "epoch 1/2 done" in line for line in lines)
    assert done.result == json.loads((tmp_path / "run" / "result.json").read_text())
    assert not done.student.training


def test_bad_input_raises_the_one_line_error(fake_fmnist, tmp_path):
    with pytest.raises(ConfigError, match="unknown key optim.lrr"):
        ckd.train(tiny_config(fake_fmnist, tmp_path / "x"), ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="does not exist"):
        ckd.load_student(tmp_path / "nothing")
    assert not (tmp_path / "x").exists()


def test_import_ckd_and_the_help_do_not_load_torch():
    code = (
        "import sys, ckd\n"
        "from ckd.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['--version'], ['list', 'models'],\n"
        "             ['list', 'configs']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]\n"
        "print(ckd.__version__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(ckd.__version__)
    assert f"ckd {ckd.__version__}" in proc.stdout  # --version


def test_the_lazy_names_are_the_real_ones():
    from ckd.api import train
    from ckd.losses import ckd_loss

    assert ckd.ckd_loss is ckd_loss and ckd.train is train
    assert {"train", "evaluate", "load_student", "ckd_loss"} <= set(dir(ckd))
    with pytest.raises(AttributeError):
        ckd.no_such_name  # noqa: B018
