"""examples/ckd_minimal.py run for real, as a user runs it (a subprocess), with tiny settings:
on Debian's Fashion-MNIST when it is installed, else on a generated stand-in folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ckd.data import make_fake_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ckd_minimal.py"
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
RESULT = re.compile(r"^(teacher|CE|CKD) +(\S+) +top-1 +(\d+\.\d\d)%  \((\d+) epochs, \d+ s\)$")
# 54 teacher steps of resnet8 and 18 per student: about 8 s of CPU time in all
TINY = (
    "--train-subset", "600", "--test-subset", "200", "--batch-size", "32", "--lr", "0.1",
    "--teacher", "resnet8", "--teacher-epochs", "3", "--epochs", "1",
)  # fmt: skip


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    # one thread: batches this small gain nothing from more, and on a busy machine they spin-wait
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(EXAMPLE), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_the_example_trains_a_teacher_and_two_students(tmp_path):
    if DEBIAN_FMNIST.is_dir():
        data = []  # the example's default: the Debian copy, through ckd.data
    else:
        data = ["--data-root", str(make_fake_fashion_mnist(tmp_path, n_train=600, n_test=200))]
    proc = run_example(*TINY, *data)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "Fashion-MNIST: 600 training and 200 test images", lines
    results = [RESULT.match(line) for line in lines[1:]]
    assert all(results) and len(results) == 3, lines
    rows = {m[1]: (m[2], float(m[3]), int(m[4])) for m in results if m}
    assert rows.keys() == {"teacher", "CE", "CKD"}
    assert rows["teacher"][0] == "resnet8" and rows["teacher"][2] == 3
    assert rows["CE"][0] == rows["CKD"][0] == "resnet8"
    assert all(0.0 <= acc <= 100.0 for _, acc, _ in rows.values())
    assert rows["teacher"][1] > 30.0, lines  # chance is 10%


def test_bad_input_is_one_line_before_any_training(tmp_path):
    missing = tmp_path / "nothing"
    proc = run_example("--data-root", str(missing))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("ckd_minimal.py: error: fashion_mnist:"), proc.stderr
    assert str(missing) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not missing.exists()  # nothing created where the data was looked for


@pytest.mark.slow
def test_the_example_is_deterministic_on_one_machine(tmp_path):
    data = ["--data-root", str(make_fake_fashion_mnist(tmp_path, n_train=200, n_test=100))]
    args = (*TINY, "--train-subset", "200", "--test-subset", "100", "--teacher-epochs", "1")
    first, second = run_example(*args, *data), run_example(*args, *data)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr

    def figures(out: str) -> list[str]:  # the printed lines without their times
        return [re.sub(r", \d+ s\)$", ")", line) for line in out.splitlines()]

    assert figures(first.stdout) == figures(second.stdout)
