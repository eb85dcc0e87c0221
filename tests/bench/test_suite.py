"""The benchmark runner's bookkeeping: plan, skip finished runs, resume, aggregate."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml

from ckd.bench.report import aggregate, comparisons, find_runs, markdown_report
from ckd.bench.suite import load_suite, main_report, run_suite
from ckd.errors import ConfigError


def rows(values):
    return [
        {
            "label": label,
            "method": method,
            "student": "s",
            "teacher": "t",
            "seed": i,
            "last_top1": v,
            "best_top1": v + 1,
            "teacher_top1": 90.0,
        }
        for label, method, vs in values
        for i, v in enumerate(vs)
    ]


def test_aggregate_mean_and_sample_std():
    (g,) = aggregate(rows([("CKD", "ckd", [70.0, 72.0, 74.0])]))
    assert g.mean == pytest.approx(72.0)
    assert g.std == pytest.approx(2.0)  # sample std (ddof = 1)
    (one,) = aggregate(rows([("CKD", "ckd", [70.0])]))
    assert math.isnan(one.std)


def test_report_gives_paired_differences_with_t_intervals():
    report = markdown_report(
        rows(
            [
                ("CE", "vanilla", [60.0, 62.0]),
                ("KD", "kd", [64.0, 64.0]),
                ("CKD", "ckd", [66.0, 68.0]),
            ]
        ),
        "t",
        "ckd bench x.yaml",
    )
    line = next(ln for ln in report.splitlines() if ln.startswith("| CKD |"))
    # vs CE: 6 and 6, no spread; vs KD: 2 and 4, mean 3 +- t(0.975, 1) * 1 = 12.71
    assert "67.00 ± 1.41" in line and "+6.00 [+6.00, +6.00] *" in line
    assert "+3.00 [-9.71, +15.71] |" in line
    assert "| CKD - CE | s | 2 | +6.00 | [+6.00, +6.00] | CKD higher |" in report
    assert "| CKD - KD | s | 2 | +3.00 | [-9.71, +15.71] | no difference shown |" in report
    assert "Teacher t: top-1 90.00" in report and "torch:" in report


def fake_run(root, name, seed=0, top1=70.0, method=None, **changes):
    """A finished run folder (config.yaml + result.json) without training anything."""
    cfg = {
        "data": {"name": "fashion_mnist", "root": f"/data/{name}", "num_workers": 2},
        "student": {"name": "resnet8"},
        "teacher": {"name": "resnet20", "checkpoint": "teacher.pt"},
        "method": method or {"name": "ckd"},
        "optim": {"epochs": 4},
        "run": {"seed": seed, "out_dir": str(root / name), "progress": False},
    }
    for key, value in changes.items():
        section, option = key.split("__")
        cfg[section][option] = value
    if cfg["method"]["name"] == "vanilla":
        cfg["teacher"] = None
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = {"finished": True, "epochs": 4, "last_top1": top1, "best_top1": top1}
    result |= {"best_epoch": 4, "last_top5": 99.0, "wall_time_s": 1.0, "images_per_s": 10.0}
    (run / "result.json").write_text(json.dumps(result))
    return run


def test_runs_are_grouped_by_their_config_not_by_method_model_and_seed(tmp_path):
    # issue 16: two unrelated seed-0 CKD runs (1 and 8 epochs) became one "43.90 +- 21.07" row
    fake_run(tmp_path, "short", top1=22.83, optim__epochs=1)
    fake_run(tmp_path, "long", top1=64.97, optim__epochs=8)
    # seeds of one config, written elsewhere, data read from elsewhere, other workers: one group
    fake_run(tmp_path, "a0", seed=0, top1=70.0, method={"name": "ckd", "w_ckd": 5.0})
    fake_run(
        tmp_path, "a1", seed=1, top1=72.0, method={"name": "ckd", "w_ckd": 5.0}, data__num_workers=0
    )
    fake_run(tmp_path, "a1_again", seed=1, top1=10.0, method={"name": "ckd", "w_ckd": 5.0})
    groups = aggregate(find_runs([tmp_path]))
    by_label = {g.label: g for g in groups}
    assert set(by_label) == {
        "ckd (method.w_ckd=5.0, optim.epochs=4)",
        "ckd (method.w_ckd=10.0, optim.epochs=1)",
        "ckd (method.w_ckd=10.0, optim.epochs=8)",
    }
    assert by_label["ckd (method.w_ckd=10.0, optim.epochs=1)"].values == [22.83]
    assert by_label["ckd (method.w_ckd=10.0, optim.epochs=8)"].values == [64.97]
    five = by_label["ckd (method.w_ckd=5.0, optim.epochs=4)"]
    assert five.by_seed == {0: 70.0, 1: 72.0}  # a second run of seed 1 is not counted twice
    assert len(five.duplicates) == 1 and five.duplicates[0].endswith("a1_again")
    report = markdown_report(find_runs([tmp_path]), "t", "c")
    assert "| ckd (method.w_ckd=10.0, optim.epochs=1) | resnet8 | 1 | 22.83 |" in report
    assert "a1_again" in report


def test_references_share_the_student_and_every_setting_but_the_method(tmp_path):
    for seed, (ce, kd, kd_ls, ckd, ckd_b16) in enumerate(
        [(60, 62, 70, 65, 50), (61, 63, 71, 67, 51), (59, 61, 69, 64, 52)]
    ):
        fake_run(tmp_path, f"ce{seed}", seed, ce, {"name": "vanilla"})
        fake_run(tmp_path, f"kd{seed}", seed, kd, {"name": "kd"})
        ls = {"name": "kd", "logit_standardize": True}
        fake_run(tmp_path, f"kdls{seed}", seed, kd_ls, ls)
        fake_run(tmp_path, f"ckd{seed}", seed, ckd, {"name": "ckd"})
        fake_run(tmp_path, f"b16_{seed}", seed, ckd_b16, {"name": "ckd"}, data__batch_size=16)
        other = fake_run(tmp_path, f"t2_{seed}", seed, 99.0, {"name": "kd"})
        (other / "config.yaml").write_text(
            (other / "config.yaml").read_text().replace("teacher.pt", "other_teacher.pt")
        )
    groups = aggregate(find_runs([tmp_path]))
    found = {(c.group.label, c.kind): c for c in comparisons(groups)}
    ckd = found["ckd (data.batch_size=64)", "vs KD"]
    assert ckd.reference.label.startswith("kd (") and "other" not in ckd.reference.label
    assert not ckd.reference.settings.get("method.logit_standardize")
    assert (ckd.diff.n, ckd.diff.mean) == (3, pytest.approx(10 / 3))
    assert found["ckd (data.batch_size=64)", "vs CE"].diff.mean == pytest.approx(16 / 3)
    assert ("ckd (data.batch_size=16)", "vs CE") not in found  # no CE at batch 16
    assert ("ckd (data.batch_size=16)", "vs KD") not in found
    kd_with_another_teacher = [g for g in groups if "other_teacher" in g.label]
    assert len(kd_with_another_teacher) == 1
    assert (kd_with_another_teacher[0].label, "vs KD") not in found


@pytest.fixture
def suite_file(tmp_path, fake_fmnist):
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "name": "fashion_mnist",
                    "root": str(fake_fmnist),
                    "batch_size": 32,
                    "num_workers": 0,
                    "train_subset": 96,
                    "test_subset": 50,
                },
                "optim": {"epochs": 1, "lr": 0.05, "schedule": "cosine"},
                "run": {"device": "cpu", "tensorboard": False, "progress": False},
            }
        )
    )
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "base": str(base),
                "teacher": {"name": "resnet8"},
                "students": ["resnet8"],
                "methods": [
                    {"label": "CE", "method": {"name": "vanilla"}},
                    {"label": "CKD", "method": {"name": "ckd", "w_ckd": 5.0}},
                ],
                "seeds": [0, 1],
                "out_dir": str(tmp_path / "out"),
            }
        )
    )
    return suite


def test_suite_runs_skips_finished_and_resumes(tmp_path, suite_file, capsys):
    root = run_suite(suite_file)
    with open(root / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert sorted((r["label"], r["seed"]) for r in table) == [
        ("CE", "0"),
        ("CE", "1"),
        ("CKD", "0"),
        ("CKD", "1"),
    ]
    assert all(r["teacher"] == "resnet8" for r in table if r["label"] == "CKD")
    report = (root / "report.md").read_text()
    assert "| CKD | resnet8 | 2 |" in report and (root / "bars.png").is_file()

    finished = root / "CKD" / "resnet8" / "seed1"
    stamp = (finished / "last.pt").stat().st_mtime_ns
    (root / "CE" / "resnet8" / "seed0" / "result.json").unlink()  # as if stopped at the end
    capsys.readouterr()
    run_suite(suite_file)
    out = capsys.readouterr().out
    assert "CKD resnet8 seed 1: finished earlier, skipped" in out
    assert (finished / "last.pt").stat().st_mtime_ns == stamp
    assert (root / "CE" / "resnet8" / "seed0" / "result.json").is_file()  # resumed, finished

    def accuracy(text):  # the report without the timings (images/s) and software
        lines = text.split("Software")[0].splitlines()
        return [
            ln.split("|")[:6] + ln.split("|")[7:] if ln.startswith("| ") else ln for ln in lines
        ]

    assert accuracy((root / "report.md").read_text()) == accuracy(report)

    rebuilt = main_report([str(root)], str(tmp_path / "rebuilt"))
    assert "| CKD | resnet8 | 2 |" in rebuilt and "| CKD - CE | resnet8 | 2 |" in rebuilt
    for name in ("results.csv", "report.md", "differences.csv", "bars.png", "differences.png"):
        assert (tmp_path / "rebuilt" / name).is_file()

    from ckd.cli import main  # the command line runs the same suite: everything is finished

    assert main(["bench", str(suite_file)]) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 4


def test_report_writes_into_the_folder_it_is_given(tmp_path, suite_file, capsys):
    from ckd.cli import main

    data = yaml.safe_load(suite_file.read_text())
    data["seeds"] = [0]
    data["compare"] = [["CKD", "CE"]]
    data["overrides"] = ["run.eval_teacher=false"]  # the teacher's top-1: its own result.json
    suite_file.write_text(yaml.safe_dump(data))
    root = run_suite(suite_file)
    for name in ("results.csv", "report.md", "bars.png"):
        (root / name).unlink()
    capsys.readouterr()
    assert main(["report", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("# tiny") == 1  # the suite's name, printed once
    assert "| CKD - CE | resnet8 | 1 |" in out and "not tested" in out
    assert f"Teacher resnet8 (`{root / 'teacher'}`, seed 0): top-1 " in out
    assert (root / "report.md").read_text() == out and (root / "results.csv").is_file()
    assert main(["report", str(root), str(root)]) == 2  # several folders: --out needed
    assert "--out" in capsys.readouterr().err
    data["compare"] = [["CKD", "KD"]]
    suite_file.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="compare"):
        load_suite(suite_file)


def test_a_bad_suite_fails_before_anything_runs(tmp_path, suite_file):
    data = yaml.safe_load(suite_file.read_text())
    data["methods"].append({"label": "X", "method": {"name": "ckd", "w_ckdd": 1.0}})
    suite_file.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="w_ckdd"):
        run_suite(suite_file)
    assert not (tmp_path / "out").exists()
    data["methods"][-1] = {"label": "CE", "method": {"name": "kd"}}
    suite_file.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="unique"):
        load_suite(suite_file)


def test_shipped_suites_load():
    from pathlib import Path

    from ckd.bench.suite import plan

    for path in sorted(Path(__file__).resolve().parents[2].glob("benchmarks/suites/*.yaml")):
        suite = load_suite(path)
        assert plan(suite, str(path))


def test_a_shared_teacher_with_other_settings_is_not_reused(tmp_path, suite_file):
    data = yaml.safe_load(suite_file.read_text())
    data["methods"] = data["methods"][:1]
    data["seeds"] = [0]
    data["teacher"]["out_dir"] = str(tmp_path / "shared_teacher")
    suite_file.write_text(yaml.safe_dump(data))
    run_suite(suite_file)
    assert (tmp_path / "shared_teacher" / "result.json").is_file()
    assert not (tmp_path / "out" / "teacher").exists()
    data["teacher"]["overrides"] = ["optim.lr=0.01"]
    suite_file.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="optim.lr is 0.01 but the run was started with 0.05"):
        run_suite(suite_file)


def result_metrics(root):
    """Every run's result.json without what depends on the clock or the folder."""
    out = {}
    for path in sorted(root.glob("*/*/seed*/result.json")):
        result = json.loads(path.read_text())
        for key in ("wall_time_s", "images_per_s", "out_dir"):
            result.pop(key)
        out[str(path.relative_to(root))] = result
    return out


@pytest.mark.slow
def test_jobs_run_the_suite_in_processes_of_their_own_with_the_same_results(
    tmp_path, suite_file, capsys
):
    """``--jobs 2`` (two runs at once, each its own process, one torch thread each) gives
    every run the result.json of the one-at-a-time suite with one thread, trains the teacher
    once before the jobs, and records the suite's throughput."""
    data = yaml.safe_load(suite_file.read_text())
    for jobs in (1, 2):
        data["out_dir"] = str(tmp_path / f"jobs{jobs}")
        suite_file.write_text(yaml.safe_dump(data))
        from ckd.cli import main

        assert main(["suite", str(suite_file), "--jobs", str(jobs), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    one, two = tmp_path / "jobs1", tmp_path / "jobs2"
    assert result_metrics(one) == result_metrics(two) and len(result_metrics(two)) == 4
    assert "[teacher] resnet8" in out and "2 at once on the CPU" in out
    for root, at_once in ((one, 1), (two, 2)):
        throughput = json.loads((root / "throughput.json").read_text())
        assert throughput["runs_trained"] == 4 and throughput["processes_at_once"] == at_once
        assert throughput["threads_per_run"] == 1 and throughput["runs_per_hour"] > 0
    assert (two / "logs" / "CKD_resnet8_seed1.log").is_file()
    assert "--jobs 2 --threads 1" in (two / "report.md").read_text()
    # finished: nothing runs again, and a bad --jobs is one line
    assert main(["suite", str(suite_file), "--jobs", "2"]) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 4
    assert main(["suite", str(suite_file), "--jobs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "ckd: error: --jobs must be >= 1; got 0"


def test_bad_jobs_threads_and_mps_are_one_line_before_anything_runs(tmp_path, suite_file, capsys):
    from ckd.bench.jobs import cuda_mps
    from ckd.cli import main

    for flags, message in (
        (["--jobs", "0"], "--jobs must be >= 1; got 0"),
        (["--jobs", "2", "--threads", "0"], "--threads must be >= 1; got 0"),
    ):
        assert main(["suite", str(suite_file), *flags]) == 2
        assert capsys.readouterr().err.strip() == f"ckd: error: {message}"
    assert not (tmp_path / "out").exists()
    with cuda_mps("auto", [], 4) as env:  # no GPU: no MPS, nothing started
        assert env is None
