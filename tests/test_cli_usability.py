"""The command line a new user meets: help without torch and without markup, --version, a
fast ``ckd list`` with right parameter counts, the tv:/timm: prefixes named, ``--print-config``
as a dry run, and missing data named before a missing teacher."""

from __future__ import annotations

import argparse

import pytest
import yaml

from ckd.cli import build_parser, main
from ckd.config import config_from_dict, load_config
from tests.conftest import tiny_config
from tests.helpers import run_bad


def parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


def test_help_texts_carry_no_rest_markup():
    helps = [p.format_help() for p in parsers(build_parser())]
    assert len(helps) > 15
    for text in helps:
        assert "``" not in text, text


def test_version(capsys):
    import ckd

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"ckd {ckd.__version__}"


def test_list_models_counts_are_those_of_the_built_models(capsys):
    from ckd.listing import computed_parameters, zoo_parameters

    assert zoo_parameters() == computed_parameters(), (
        "src/ckd/models/zoo/parameters.json is not the registry's: regenerate it with "
        "`python -m ckd.listing --write`"
    )
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "  resnet8            83,892" in out
    assert "tv:<name>" in out and "timm:<name>" in out


def test_an_unknown_model_names_the_prefixes(capsys, fake_fmnist, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(fake_fmnist, tmp_path / "out")))
    line = run_bad(capsys, ["train", str(path), "student.name=resnet9"])
    assert "unknown model 'resnet9'" in line and "tv:<" in line and "timm:<" in line
    line = run_bad(capsys, ["train", str(path), "student.name=tv:resnet9"])
    assert "unknown torchvision model 'resnet9'" in line
    assert not (tmp_path / "out").exists()


def test_print_config_is_a_dry_run(capsys, fake_fmnist, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(fake_fmnist, tmp_path / "out")))
    assert main(["train", str(path), "optim.lr=0.02", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ") and f"run folder {tmp_path / 'out'}" in out.splitlines()[0]
    printed = yaml.safe_load(out)
    assert printed["optim"]["lr"] == 0.02 and printed["method"] == {"name": "vanilla", "w_ce": 1.0}
    assert config_from_dict(printed).to_dict() == load_config(path, ["optim.lr=0.02"]).to_dict()
    assert not (tmp_path / "out").exists()  # nothing written
    # a config naming a missing file: printed, then a one-line note (a dry run succeeds)
    missing = ["teacher.name=resnet8", "teacher.checkpoint=/no/such.pt", "method.name=kd"]
    assert main(["train", str(path), *missing, "--print-config"]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["teacher"]["checkpoint"] == "/no/such.pt"
    assert captured.err.strip().startswith(
        "ckd: note: teacher.checkpoint: file '/no/such.pt' does not exist"
    )
    assert captured.err.strip().endswith("(a run would stop here)")


def test_missing_data_is_named_before_a_missing_teacher(capsys, tmp_path):
    line = run_bad(
        capsys,
        [
            "train",
            "cifar100/ckd/resnet32x4_resnet8x4",
            f"data.root={tmp_path / 'cifar'}",
            f"run.out_dir={tmp_path / 'out'}",
        ],
    )
    assert f"no dataset at {tmp_path / 'cifar' / 'cifar-100-python'}" in line
    assert "data.download=true" in line and "teacher" not in line
    assert not (tmp_path / "out").exists()
