"""``ckd eval`` measures a run on the run's own test set (its ``data.test_subset``, drawn with
its seed) unless told otherwise, and says which set it used."""

from __future__ import annotations

import json

import pytest

from ckd.cli import main
from ckd.config import config_from_dict
from tests.conftest import tiny_config
from tests.helpers import run_bad


@pytest.fixture(scope="module")
def subset_run(fake_fmnist, tmp_path_factory):
    """A one-epoch run that tests on 40 of the 100 test images, drawn with seed 3."""
    from ckd.engine import Trainer

    out = tmp_path_factory.mktemp("subset") / "run"
    cfg = tiny_config(
        fake_fmnist,
        out,
        optim={"epochs": 1},
        data={"test_subset": 40, "train_subset": 64},
        run={"seed": 3},
    )
    result = Trainer(config_from_dict(cfg), echo=lambda _: None).fit()
    return out, result


def test_eval_uses_the_runs_own_test_set_and_says_which(capsys, subset_run):
    out, result = subset_run
    assert main(["eval", str(out), "--json"]) == 0  # a run folder: its last.pt
    lines = capsys.readouterr().out.strip().splitlines()
    assert "(the run's test subset, 40 of 100 images, seed 3; --full-test for all)" in lines[0]
    measured = json.loads(lines[-1])
    assert measured["n"] == 40 and measured["top1"] == pytest.approx(result["last_top1"])
    assert main(["eval", str(out / "last.pt"), "--full-test", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "(the whole split, 100 images)" in lines[0] and json.loads(lines[-1])["n"] == 100
    assert main(["eval", str(out / "last.pt"), "--subset", "20"]) == 0
    assert "(a subset, 20 of 100 images, seed 0)" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # one or the other
        main(["eval", str(out), "--subset", "20", "--full-test"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert "--batch-size must be >= 1" in run_bad(capsys, ["eval", str(out), "--batch-size", "0"])
