"""The offline demo: a teacher on Fashion-MNIST, then one student with CE only, KD and CKD.

Every run goes through the same trainer and CLI machinery as ``ckd train``; finished runs are
reused and interrupted ones resumed, so running the demo twice never trains or loses anything
twice.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import ckd.tasks  # noqa: F401  (registers the tasks and their config schemas)
from ckd.bench.plots import plot_curves
from ckd.config import load_config
from ckd.engine import Trainer
from ckd.engine.rundir import holds_run

say = functools.partial(print, flush=True)  # progress shows up in logs at once

RUNS = (  # (label, shipped config, learns from the teacher)
    ("teacher", "fashion_mnist/teacher", False),
    ("CE", "fashion_mnist/ce", False),
    ("KD", "fashion_mnist/kd", True),
    ("CKD", "fashion_mnist/ckd", True),
)


def run_demo(out: Path, data_root: str | None = None, overrides: list[str] | None = None) -> str:
    """Train the four runs under ``out`` and print (and return) the table of test accuracies."""
    results: dict[str, dict] = {}
    teacher_ckpt = out / "teacher" / "last.pt"
    for label, name, distilled in RUNS:
        run_dir = out / label.lower()
        extra = [f"run.out_dir={run_dir}", *(overrides or [])]
        if data_root is not None:
            extra.append(f"data.root={data_root}")
        if distilled:
            extra.append(f"teacher.checkpoint={teacher_ckpt}")
        done = run_dir / "result.json"
        if done.is_file():
            say(f"[{label}] finished earlier: reusing {done}")
            results[label] = json.loads(done.read_text())
            continue
        cfg = load_config(name, extra)
        say(f"[{label}] ckd train {name} " + " ".join(extra))
        results[label] = Trainer(cfg, resume=holds_run(run_dir)).fit()
    table = format_table(results)
    png = plot_curves(
        [out / label.lower() for label, _, _ in RUNS], out / "curves.png", [r[0] for r in RUNS]
    )
    (out / "results.md").write_text(table + "\n")
    say()
    say(table)
    say(f"\ncurves: {png}   table: {out / 'results.md'}")
    return table


def format_table(results: dict[str, dict]) -> str:
    """A Markdown table: one row per run, last-epoch and best test accuracy."""
    lines = [
        "| run | model | last top-1 | best top-1 (epoch) | last top-5 | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        lines.append(
            f"| {label} | {r['student']} | {r['last_top1']:.2f} | {r['best_top1']:.2f} "
            f"({r['best_epoch']}) | {r['last_top5']:.2f} | {r['wall_time_s']:.0f} |"
        )
    return "\n".join(lines)
