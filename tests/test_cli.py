"""Config validation and the command line: every bad input is one line, exit 2, nothing
written; shipped configs load and carry the released hyper-parameters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ckd.cli import main
from ckd.config import load_config
from ckd.config_files import CONFIG_DIR, read_yaml, shipped_configs
from tests.conftest import tiny_config
from tests.helpers import run_bad


@pytest.fixture
def cfg_file(tmp_path, fake_fmnist):
    def write(**sections):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(tiny_config(fake_fmnist, tmp_path / "out", **sections)))
        return path

    return write


@pytest.mark.parametrize(
    "sections,overrides,expected",
    [
        ({}, ["optim.lrr=0.1"], "unknown key optim.lrr; allowed: epochs, iters, lr"),
        ({}, ["optim.lr=fast"], "optim.lr: expected a finite number, got 'fast'"),
        ({}, ["optim.epochs=1.5"], "optim.epochs: expected an integer"),
        ({}, ["student.name=resnet9"], "unknown model 'resnet9'; known:"),
        ({}, ["method.name=crd2"], "unknown method 'crd2'; known:"),
        ({}, ["data.name=mnist"], "unknown dataset 'mnist'; known:"),
        ({}, ["method.name=ckd"], "needs a teacher"),
        ({}, ["optim.schedule=linear"], "optim.schedule: expected one of"),
        ({}, ["optim.lr=-1"], "optim.lr must be > 0"),
        ({}, ["optim.schedule=step", "optim.milestones=[5, 1]"], "optim.milestones"),
        ({}, ["data.batch_size=0"], "data.batch_size must be >= 1"),
        ({}, ["method.temperature=1"], "unknown key method.temperature"),
        ({}, ["run.device=gpu"], "run.device"),
        ({}, ["nonsense"], "bad override"),
        (
            {
                "teacher": {"name": "resnet8", "checkpoint": "/no/such/teacher.pt"},
                "method": {"name": "ckd"},
            },
            [],
            "teacher.checkpoint: file '/no/such/teacher.pt' does not exist",
        ),
        (
            {"method": {"name": "ckd", "negatives": "teacher"}},
            ["teacher.name=resnet8", f"teacher.checkpoint={__file__}"],
            "method.negatives must be one of cross, student",
        ),
        ({}, ["data.root=/no/such/dir"], "not found; tried /no/such/dir"),
    ],
)
def test_bad_inputs_give_one_line_and_exit_2(
    capsys, cfg_file, tmp_path, sections, overrides, expected, monkeypatch
):
    monkeypatch.setattr("ckd.data.fashion_mnist.FASHION_MNIST_SEARCH_PATHS", ())
    line = run_bad(capsys, ["train", str(cfg_file(**sections)), *overrides])
    assert expected in line
    assert not (tmp_path / "out").exists()  # nothing written


def test_missing_config_and_bad_yaml(capsys, tmp_path):
    assert "not found" in run_bad(capsys, ["train", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    assert "invalid YAML" in run_bad(capsys, ["train", str(bad)])
    assert "does not exist" in run_bad(capsys, ["eval", str(tmp_path / "none.pt")])


def test_missing_cifar_root_is_named(capsys, tmp_path):
    line = run_bad(
        capsys,
        [
            "train",
            "cifar100/vanilla/resnet8x4",
            f"data.root={tmp_path / 'cifar'}",
            f"run.out_dir={tmp_path / 'out'}",
        ],
    )
    assert str(tmp_path / "cifar") in line
    assert not (tmp_path / "out").exists()


def test_resume_refuses_a_changed_config(capsys, cfg_file, tmp_path):
    path = cfg_file()
    assert main(["train", str(path), "--stop-after", "1"]) == 0
    line = run_bad(capsys, ["train", str(path), "optim.lr=0.5", "--resume"])
    assert "optim.lr is 0.5 but the run was started with 0.05" in line
    assert "no checkpoint" in run_bad(
        capsys, ["train", str(path), f"run.out_dir={tmp_path / 'x'}", "--resume"]
    )


def test_module_entry_point_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ckd", "train", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("ckd: error:") and "Traceback" not in proc.stderr


def test_list_shows_models_methods_and_configs(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "resnet32x4",
        "ShuffleV2",
        "ckd",
        "dkd",
        "fashion_mnist",
        "cifar100/ckd/resnet32x4_resnet8x4",
    ):
        assert name in out
    assert "1,233,540" in out  # resnet8x4 for 100 classes


def test_every_shipped_config_loads(tmp_path):
    names = shipped_configs()
    assert len(names) >= 4 * 11
    for name in names:
        has_teacher = "teacher" in read_yaml(CONFIG_DIR / f"{name}.yaml")
        cfg = load_config(name, [f"teacher.checkpoint={__file__}"] if has_teacher else [])
        assert cfg.student.name


# (teacher, student): batch, lr, w_ckd, tau  -- METHOD.md, released CKD recipes
RELEASED = {
    ("resnet56", "resnet20"): (64, 0.05, 10, 1),
    ("resnet110", "resnet32"): (64, 0.05, 10, 1),
    ("resnet32x4", "resnet8x4"): (64, 0.05, 100, 1),
    ("vgg13", "vgg8"): (64, 0.05, 100, 1),
    ("wrn_40_2", "wrn_16_2"): (64, 0.05, 100, 1),
    ("wrn_40_2", "wrn_40_1"): (32, 0.05, 50, 2),
    ("resnet32x4", "ShuffleV1"): (32, 0.01, 100, 1),
    ("resnet32x4", "ShuffleV2"): (64, 0.01, 100, 1),
    ("ResNet50", "MobileNetV2"): (32, 0.01, 100, 1),
    ("vgg13", "MobileNetV2"): (32, 0.01, 50, 2),
    ("wrn_40_2", "ShuffleV1"): (32, 0.01, 100, 1),
}

# DKD's beta where a reference recipe sets one (configs/cifar100/dkd/*.yaml of the CKD code and
# mdistiller); the others (wrn40_2_shuv1.yaml among them) set none, so cfg.py's 8.0 applies
DKD_BETA = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "MobileNetV2"): 6.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
}


@pytest.mark.parametrize("pair", list(RELEASED))
def test_cifar100_configs_carry_the_released_hyper_parameters(pair):
    teacher, student = pair
    batch, lr, w_ckd, tau = RELEASED[pair]
    over = [f"teacher.checkpoint={__file__}"]
    ckd = load_config(f"cifar100/ckd/{teacher}_{student}", over)
    assert (ckd.teacher.name, ckd.student.name) == pair
    assert (ckd.data.batch_size, ckd.optim.lr) == (batch, lr)
    assert (ckd.method.options.w_ckd, ckd.method.options.temperature) == (w_ckd, tau)
    assert (ckd.method.options.w_ce, ckd.method.options.negatives) == (1.0, "cross")
    assert (ckd.optim.epochs, ckd.optim.schedule, ckd.optim.warmup_epochs) == (480, "cosine", 0)
    assert (ckd.optim.momentum, ckd.optim.weight_decay) == (0.9, 5e-4)
    kd = load_config(f"cifar100/kd/{teacher}_{student}", over)
    small = student in ("ShuffleV1", "ShuffleV2", "MobileNetV2")
    assert (kd.optim.epochs, kd.optim.milestones, kd.data.batch_size) == (240, [150, 180, 210], 64)
    assert kd.optim.lr == (0.01 if small else 0.05)
    assert (kd.method.options.w_ce, kd.method.options.w_kd, kd.method.options.temperature) == (
        0.1,
        0.9,
        4.0,
    )
    dkd = load_config(f"cifar100/dkd/{teacher}_{student}", over)
    beta = DKD_BETA.get(pair, 8.0)
    assert (dkd.method.options.beta, dkd.method.options.warmup_epochs) == (beta, 20)
    for name in (teacher, student):
        assert load_config(f"cifar100/vanilla/{name}").method.name == "vanilla"


def test_configs_dir_at_repo_root_is_the_shipped_one():
    root = Path(__file__).resolve().parents[1] / "configs"
    assert root.resolve() == CONFIG_DIR


def test_eval_of_a_foreign_checkpoint_needs_model_and_data(capsys, tmp_path, fake_fmnist):
    import torch

    from ckd.models import create_model

    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": create_model("resnet8", 10, 1).state_dict()}, path)
    assert "give --model" in run_bad(capsys, ["eval", str(path)])
    assert "does not fit resnet14" in run_bad(
        capsys,
        [
            "eval",
            str(path),
            "--model",
            "resnet14",
            "--data",
            "fashion_mnist",
            "--data-root",
            str(fake_fmnist),
        ],
    )
    assert (
        main(
            [
                "eval",
                str(path),
                "--model",
                "resnet8",
                "--data",
                "fashion_mnist",
                "--data-root",
                str(fake_fmnist),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "top-1" in capsys.readouterr().out
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert f"{junk}: not a readable checkpoint" in run_bad(capsys, ["eval", str(junk)])
