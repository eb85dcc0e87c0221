"""``ckd plot curves``: one colour per run in both panels, markers for short runs, weighted
loss terms labelled with their weights."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def test_the_curves_figure(tmp_path):
    from ckd.bench.plots import curves_figure, plot_curves

    def run(name: str, method: dict, rows: list[dict]) -> Path:
        folder = tmp_path / name / "seed0"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump({"method": method}))
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return folder

    one = run(
        "ckd",
        {"name": "ckd", "w_ce": 1.0, "w_ckd": 10.0},
        [{"epoch": 1, "train_ce": 1.2, "train_ckd": 3.0, "train_top1": 50, "test_top1": 60}],
    )
    two = run(
        "dkd",
        {"name": "dkd", "w_ce": 1.0, "alpha": 1.0},
        [{"epoch": e, "train_ce": 1 / e, "train_dkd": 2 / e, "test_top1": 50 + e} for e in (1, 2)],
    )
    fig = curves_figure([one, two])
    acc, loss = fig.axes
    acc_lines = [line for line in acc.get_lines() if len(line.get_xdata())]
    assert [len(line.get_xdata()) for line in acc_lines] == [1, 2]
    assert all(line.get_marker() == "o" for line in acc_lines)  # a one-epoch run shows
    labels = {line.get_label(): line.get_color() for line in loss.get_lines()}
    assert set(labels) == {"ckd: ce x 1", "ckd: ckd x 10", "dkd: ce x 1", "dkd: dkd (weighted)"}
    for run_name, acc_line in zip(("ckd", "dkd"), acc_lines, strict=True):
        colours = {c for label, c in labels.items() if label.startswith(f"{run_name}:")}
        assert colours == {acc_line.get_color()}  # the run's colour in both panels
    assert labels["ckd: ce x 1"] != labels["dkd: ce x 1"]
    assert plot_curves([one, two], tmp_path / "c.png").stat().st_size > 1000
