"""Aggregate finished runs: one row per run, mean ± std over seeds, gains over CE and KD.

A run is a folder with ``result.json`` and ``config.yaml`` (what ``ckd train`` leaves). Runs are
grouped by their label (the config's ``description``, set by the suite runner; the method
names otherwise) and student; the statistic is the **last-epoch** top-1 over seeds (sample
standard deviation, ddof = 1).
"""

from __future__ import annotations

import csv
import json
import math
import platform
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckd.engine.rundir import read_saved_config
from ckd.errors import one_line

COLUMNS = (
    "label",
    "method",
    "student",
    "teacher",
    "seed",
    "epochs",
    "last_top1",
    "best_top1",
    "best_epoch",
    "last_top5",
    "teacher_top1",
    "wall_time_s",
    "images_per_s",
    "run_dir",
)


def method_label(method: dict[str, Any]) -> str:
    """``ckd`` or ``reviewkd+ckd`` from a config's method mapping."""
    return "+".join([method["name"], *(m["name"] for m in method.get("also", []))])


def read_run(run_dir: Path) -> dict[str, Any] | None:
    """The row of a finished run, or None when the run has not finished."""
    result_file, config_file = run_dir / "result.json", run_dir / "config.yaml"
    if not result_file.is_file() or not config_file.is_file():
        return None
    result = json.loads(result_file.read_text())
    if not result.get("finished"):
        return None
    cfg = read_saved_config(config_file)
    method = method_label(cfg["method"])
    return {
        "label": cfg.get("description") or method,
        "method": method,
        "student": cfg["student"]["name"],
        "teacher": (cfg.get("teacher") or {}).get("name"),
        "seed": cfg["run"]["seed"],
        "epochs": result["epochs"],
        "last_top1": result["last_top1"],
        "best_top1": result["best_top1"],
        "best_epoch": result["best_epoch"],
        "last_top5": result["last_top5"],
        "teacher_top1": result.get("teacher_top1"),
        "wall_time_s": result["wall_time_s"],
        "images_per_s": result.get("images_per_s"),
        "run_dir": str(run_dir),
    }


def find_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """Rows of every finished run at or below ``paths`` (sorted by label, student, seed)."""
    rows = []
    for path in paths:
        candidates = [path] if (path / "result.json").is_file() else []
        candidates += sorted(p.parent for p in path.rglob("result.json") if p.parent != path)
        for run in candidates:
            try:
                row = read_run(run)
            except (ValueError, LookupError, TypeError, AttributeError) as e:  # torn, foreign
                print(
                    f"ckd: note: skipped {run}: not a ckd run ({one_line(e, 200)})", file=sys.stderr
                )
                continue
            if row is not None:
                rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in COLUMNS})


@dataclass
class Group:
    label: str
    method: str
    student: str
    values: list[float]  # last-epoch top-1, one per seed
    best: list[float]
    seeds: list[int]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan


def aggregate(rows: list[dict[str, Any]]) -> list[Group]:
    """Group rows by (label, student), keeping first-seen order."""
    groups: dict[tuple[str, str], Group] = {}
    for r in rows:
        key = (r["label"], r["student"])
        g = groups.setdefault(key, Group(r["label"], r["method"], r["student"], [], [], []))
        g.values.append(float(r["last_top1"]))
        g.best.append(float(r["best_top1"]))
        g.seeds.append(int(r["seed"]))
    return list(groups.values())


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _reference(groups: list[Group], student: str, method: str) -> Group | None:
    """The one entry of ``method`` for ``student``; None when there is none or several (e.g. KD
    at several batch sizes: no single reference, so no gain is shown)."""
    found = [g for g in groups if g.student == student and g.method == method]
    return found[0] if len(found) == 1 else None


def software_versions() -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    import ckd

    return {
        "ckd": ckd.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": str(__import__("os").cpu_count()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def markdown_report(rows: list[dict[str, Any]], title: str, command: str, notes: str = "") -> str:
    """``report.md``: mean ± std of the last-epoch top-1 per (label, student), gains over the
    CE-only and KD runs of the same student, the teacher's accuracy, command and versions."""
    groups = aggregate(rows)
    teachers: dict[str, dict[int, float]] = {}
    for r in rows:
        if r["teacher"] and r["teacher_top1"] is not None:
            teachers.setdefault(r["teacher"], {})[int(r["seed"])] = float(r["teacher_top1"])
    lines = [f"# {title}", ""]
    if notes:
        lines += [notes, ""]
    lines += [f"Command: `{command}`", ""]
    for name, by_seed in sorted(teachers.items()):
        accs = sorted(set(by_seed.values()))
        if len(accs) == 1:
            lines.append(f"Teacher {name}: top-1 {accs[0]:.2f}")
        else:  # the seeds were evaluated on different test subsets
            each = ", ".join(f"seed {k}: {v:.2f}" for k, v in sorted(by_seed.items()))
            lines.append(f"Teacher {name}: top-1 {statistics.fmean(accs):.2f} ({each})")
    lines += [
        "",
        "Last-epoch test top-1 (%), mean ± sample std over seeds; best epoch for reference only. "
        "Gains are differences of the means to the one CE-only (vanilla) and the one KD entry of "
        "the same student (none shown when a suite has several).",
        "",
        "| method | student | seeds | last top-1 | best top-1 | vs CE | vs KD |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        ce = _reference(groups, g.student, "vanilla")
        kd = _reference(groups, g.student, "kd")
        gain_ce = f"{g.mean - ce.mean:+.2f}" if ce is not None and ce is not g else "-"
        gain_kd = f"{g.mean - kd.mean:+.2f}" if kd is not None and kd is not g else "-"
        best = statistics.fmean(g.best)
        lines.append(
            f"| {g.label} | {g.student} | {len(g.values)} | {_pm(g.mean, g.std)} | {best:.2f} "
            f"| {gain_ce} | {gain_kd} |"
        )
    lines += ["", "Software:", ""]
    lines += [f"- {k}: {v}" for k, v in software_versions().items()]
    return "\n".join(lines) + "\n"
