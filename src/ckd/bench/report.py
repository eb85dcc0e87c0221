"""Aggregate finished runs: one row per run, mean ± std over seeds, paired differences.

A run is a folder with ``result.json`` and ``config.yaml`` (what ``ckd train`` leaves). Runs are
grouped by their **config**: every setting of ``config.yaml`` except the seed, where the run was
written or read (``run.out_dir``, ``data.root``, ``run.teacher_cache``) and the settings that
leave its numbers alone (logging, workers, see :data:`NOT_CONFIG`); the teacher checkpoint's
path stays in (another teacher is another run). So two unrelated runs that share a method,
model and seed never merge, and two groups with the same label are told apart by the settings
in which they differ. The statistic is the **last-epoch** top-1 over seeds (sample standard
deviation, ddof = 1).

Comparisons are paired by seed (:mod:`ckd.bench.stats`): an entry against the CE-only
(``vanilla``) and the plain KD entry (``kd`` without logit standardisation) of the same student
whose other settings (data, schedule, batch, run) are the same, and against any pairs of
labels a suite names in ``compare``.

Why over 400 lines: grouping runs by config, the seed-paired statistics and the CSV and Markdown
writers are one report format; the statistics themselves are :mod:`ckd.bench.stats`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import platform
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckd.bench.stats import CONFIDENCE, PairedDifference, paired_by_seed
from ckd.engine.rundir import RESUME_FREE, read_saved_config, saved_config
from ckd.errors import one_line
from ckd.schema import flatten
from ckd.version import __version__

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
    "config_id",
    "run_dir",
)

#: Settings that do not define a run's config (see the module's docstring).
NOT_CONFIG = frozenset(RESUME_FREE | {"run.seed", "data.root", "run.teacher_cache"})


def method_label(method: dict[str, Any]) -> str:
    """``ckd`` or ``reviewkd+ckd`` from a config's method mapping."""
    return "+".join([method["name"], *(m["name"] for m in method.get("also", []))])


def run_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings that define a run (flattened, dotted keys) from its saved config."""
    try:
        cfg = saved_config(cfg)  # today's schema: defaults of later settings, moved keys
    except Exception:  # noqa: BLE001 - a config today's schema refuses is compared as saved
        pass
    flat = flatten(cfg)
    settings = {k: v for k, v in flat.items() if k not in NOT_CONFIG}
    if flat.get("data.aug_seed") == flat.get("run.seed"):  # the default: follows the seed
        settings.pop("data.aug_seed", None)
    return settings


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def config_id(settings: dict[str, Any]) -> str:
    """A short stable id of a run's settings (the same for every seed of one config)."""
    return hashlib.sha1(_canonical(settings).encode()).hexdigest()[:10]


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
    settings = run_settings(cfg)
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
        "config_id": config_id(settings),
        "run_dir": str(run_dir),
        "settings": settings,
    }


def find_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """Rows of every finished run at or below ``paths`` (in path order, each path's runs
    sorted by folder)."""
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
    """The runs of one config (one per seed). ``label`` is the name shown: the run's label,
    with the settings that set it apart when another group of the student has the same one."""

    label: str
    method: str
    student: str
    values: list[float]  # last-epoch top-1, one per seed
    best: list[float]
    seeds: list[int]
    settings: dict[str, Any] = field(default_factory=dict)
    images_per_s: list[float] = field(default_factory=list)
    wall_time_s: list[float] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # run folders of a seed seen already
    name: str = ""  # the label as the runs gave it (before telling groups apart)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    @property
    def by_seed(self) -> dict[int, float]:
        return dict(zip(self.seeds, self.values, strict=True))

    def _key(self, drop: tuple[str, ...]) -> str:
        return _canonical(
            {k: v for k, v in self.settings.items() if not k.startswith(drop) and k != "teacher"}
        )

    def teacher_settings(self) -> dict[str, Any]:
        return {k: v for k, v in self.settings.items() if k.startswith("teacher.")}

    def comparable(self, other: Group) -> bool:
        """Same student and the same settings apart from the method (and its label): the same
        data, schedule, batch and run settings, and the same teacher when both have one."""
        drop = ("method.", "description", "teacher.")
        if self.student != other.student or self._key(drop) != other._key(drop):
            return False
        mine, theirs = self.teacher_settings(), other.teacher_settings()
        return not mine or not theirs or mine == theirs


def aggregate(rows: list[dict[str, Any]]) -> list[Group]:
    """Group rows by config (first-seen order); rows without settings (made by hand) by
    (label, method, student). A second run of a config with a seed already seen is listed in
    ``duplicates`` and left out of the statistics."""
    groups: dict[str, Group] = {}
    for r in rows:
        settings = r.get("settings") or {}
        key = r.get("config_id") or _canonical([r["label"], r["method"], r["student"]])
        g = groups.setdefault(
            key,
            Group(
                r["label"], r["method"], r["student"], [], [], [], dict(settings), name=r["label"]
            ),
        )
        if int(r["seed"]) in g.seeds:
            g.duplicates.append(str(r.get("run_dir", "?")))
            continue
        g.values.append(float(r["last_top1"]))
        g.best.append(float(r["best_top1"]))
        g.seeds.append(int(r["seed"]))
        for name in ("images_per_s", "wall_time_s"):
            if r.get(name) is not None:
                getattr(g, name).append(float(r[name]))
    out = list(groups.values())
    _tell_apart(out)
    return out


def _tell_apart(groups: list[Group], most: int = 3) -> None:
    """Append, to labels that several groups of one student share, the settings in which
    those groups differ (``CKD (optim.epochs=1)``)."""
    clashes: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        clashes.setdefault((g.name, g.student), []).append(g)
    for same in clashes.values():
        if len(same) < 2:
            continue
        keys = sorted({k for g in same for k in g.settings} - {"description"})
        differ = [k for k in keys if len({_canonical(g.settings.get(k)) for g in same}) > 1]
        for i, g in enumerate(same):
            shown = [f"{k}={g.settings.get(k)}" for k in differ[:most]]
            if len(differ) > most:
                shown.append("...")
            g.label = f"{g.name} ({', '.join(shown) or f'#{i + 1}'})"


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def reference(groups: list[Group], g: Group, method: str) -> Group | None:
    """The one ``method`` entry comparable with ``g`` (:meth:`Group.comparable`); for ``kd``
    the plain one (no logit standardisation). None when there is none or several (e.g. KD at
    several schedules that ``g`` does not share), or when it is ``g`` itself."""
    found = [
        r
        for r in groups
        if r.method == method
        and r.comparable(g)
        and not (method == "kd" and r.settings.get("method.logit_standardize"))
    ]
    return found[0] if len(found) == 1 and found[0] is not g else None


@dataclass
class Comparison:
    """``group`` minus ``reference``, paired by seed."""

    kind: str  # "vs CE", "vs KD" or "named" (a suite's compare list)
    group: Group
    reference: Group
    diff: PairedDifference

    @property
    def verdict(self) -> str:
        return self.diff.verdict(f"{self.group.label} higher", f"{self.group.label} lower")


def comparisons(
    groups: list[Group], named: list[tuple[str, str]] | None = None
) -> list[Comparison]:
    """Every group against its CE-only and KD references, then the ``named`` pairs of labels
    (the first minus the second, per student where both labels have exactly one group)."""
    out: list[Comparison] = []
    for g in groups:
        for kind, method in (("vs CE", "vanilla"), ("vs KD", "kd")):
            ref = reference(groups, g, method)
            diff = paired_by_seed(g.by_seed, ref.by_seed) if ref is not None else None
            if ref is not None and diff is not None:
                out.append(Comparison(kind, g, ref, diff))
    for a, b in named or []:
        for student in dict.fromkeys(g.student for g in groups):
            first = [g for g in groups if g.student == student and a in (g.name, g.label)]
            second = [g for g in groups if g.student == student and b in (g.name, g.label)]
            if len(first) == 1 and len(second) == 1:
                diff = paired_by_seed(first[0].by_seed, second[0].by_seed)
                if diff is not None:
                    out.append(Comparison("named", first[0], second[0], diff))
    return out


DIFF_COLUMNS = ("kind", "label", "reference", "student", "pairs", "mean", "lo", "hi", "verdict")


def write_differences_csv(found: list[Comparison], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(DIFF_COLUMNS)
        for c in found:
            d = c.diff
            writer.writerow(
                [c.kind, c.group.label, c.reference.label, c.group.student, d.n]
                + [f"{x:.4f}" for x in (d.mean, d.lo, d.hi)]
                + [c.verdict]
            )


def software_versions() -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    return {
        "ckd": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": str(__import__("os").cpu_count()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def _trained_teachers(rows: list[dict[str, Any]], skip: set[str]) -> list[str]:
    """For runs that did not evaluate their teacher (``run.eval_teacher=false``): the teacher
    run's own result, when its checkpoint sits in a finished run folder (a suite's teacher)."""
    lines = []
    for ckpt in dict.fromkeys(str(r.get("settings", {}).get("teacher.checkpoint")) for r in rows):
        folder = Path(ckpt).parent
        if ckpt == "None" or not (folder / "result.json").is_file():
            continue
        result = json.loads((folder / "result.json").read_text())
        name = result.get("student")
        if name in skip or "last_top1" not in result:
            continue
        lines.append(
            f"Teacher {name} (`{folder}`, seed {result.get('seed')}): top-1 "
            f"{result['last_top1']:.2f} on its test set, after {result.get('epochs')} epochs"
        )
    return lines


def _cell(found: list[Comparison], g: Group, kind: str) -> str:
    c = next((c for c in found if c.group is g and c.kind == kind), None)
    if c is None:
        return "-"
    return f"{c.diff}{' *' if c.diff.shown else ''}"


def markdown_report(
    rows: list[dict[str, Any]],
    title: str,
    command: str,
    notes: str = "",
    compare: list[tuple[str, str]] | None = None,
) -> str:
    """``report.md``: mean ± std of the last-epoch top-1 per config, the paired differences
    to the CE-only and KD entries (and the ``compare`` pairs) with their t intervals, the
    teacher's accuracy, command and versions."""
    groups = aggregate(rows)
    found = comparisons(groups, compare)
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
    lines += _trained_teachers(rows, skip=set(teachers))
    pct = f"{CONFIDENCE:.0%}"
    lines += [
        "",
        "## Accuracy",
        "",
        "Last-epoch test top-1 (%), mean ± sample std over seeds; the best epoch's for reference "
        "only. vs CE, vs KD: the mean of the differences to the CE-only and the plain-KD entry "
        "of the same student and settings, paired by seed (one seed: the same training subset, "
        f"augmentation draws, teacher and test set), and its {pct} Student-t interval; * marks "
        "an interval that excludes 0. '-': no such reference (or several).",
        "",
        "| method | student | seeds | last top-1 | best top-1 | images/s | vs CE | vs KD |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        best = statistics.fmean(g.best)
        speed = f"{statistics.fmean(g.images_per_s):.0f}" if g.images_per_s else "-"
        lines.append(
            f"| {g.label} | {g.student} | {len(g.values)} | {_pm(g.mean, g.std)} | {best:.2f} "
            f"| {speed} | {_cell(found, g, 'vs CE')} | {_cell(found, g, 'vs KD')} |"
        )
    if found:
        lines += [
            "",
            "## Paired differences",
            "",
            f"Mean difference of the last-epoch top-1 (points), paired by seed, with its {pct} "
            "Student-t interval (mean ± t(n-1) · sd / sqrt(n) over the n pairs). A difference "
            "is called shown only when its interval excludes 0. Each interval is a separate "
            f"{pct} interval: over {len(found)} comparisons, about {len(found) / 20:.1f} would "
            "exclude 0 by chance if no method made any difference (no correction for multiple "
            "comparisons).",
            "",
            "| comparison | student | pairs | difference | interval | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for c in found:
            d = c.diff
            interval = "-" if d.n < 2 else f"[{d.lo:+.2f}, {d.hi:+.2f}]"
            lines.append(
                f"| {c.group.label} - {c.reference.label} | {c.group.student} | {d.n} "
                f"| {d.mean:+.2f} | {interval} | {c.verdict} |"
            )
    dupes = [d for g in groups for d in g.duplicates]
    if dupes:
        lines += ["", f"Left out (a second run of a config and seed already counted): {dupes}"]
    lines += ["", "Software:", ""]
    lines += [f"- {k}: {v}" for k, v in software_versions().items()]
    return "\n".join(lines) + "\n"
