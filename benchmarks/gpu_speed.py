"""The GPU checks of issue 14 ("speed where users train"), one section per invocation so that
a shell can give each its own time limit (``benchmarks/gpu_check.sh``, step ``speed``):

- ``equality``: the same run with and without ``run.cuda_graphs`` over 50 steps (CKD with the
  live teacher and with the teacher cache, KD, DKD with a per-step warm-up, CRD's memory banks
  and random negatives, ReviewKD's learnable modules): every step's loss terms within bf16
  tolerance;
- ``epoch``: resnet32x4 -> resnet8x4 (CKD, batch 64, 50,000 images), an epoch on each path:
  standard, fast, fast as one CUDA graph, fast + cache, fast + cache as one CUDA graph;
- ``pairs``: the same for resnet56 -> resnet20 and resnet32x4 -> ShuffleV2 (fast, graphed);
- ``suite``: a CIFAR-100-sized suite (8 CKD runs of resnet32x4 -> resnet8x4, 2 epochs each)
  with ``--jobs 1`` (on 2 of the runs) and with ``--jobs 4`` and ``--jobs 8``: runs per hour;
- ``cost``: ``ckd bench speed`` of CKD against KD on the fast and cache paths, eager and
  graphed (the CKD step within 3% of the KD step in every mode);
- ``compile``: ``run.compile=reduce-overhead`` (torch.compile's own CUDA graphs) against the
  captured step, resnet32x4 -> resnet8x4 fast path (compiles for a minute or two);
- ``report``: ``gpu_speed.md`` from the sections' JSON files.

Each section writes ``gpu_speed_<section>.json`` in ``--out``. ``--cpu-dry-run`` runs a
section small on the CPU, with the graphs' CPU stand-in, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_epoch import LABELS, epoch_rows, table  # noqa: E402

from ckd.bench.speed import machine, prepare, variant_config  # noqa: E402
from ckd.bench.timing import BenchSpec  # noqa: E402
from ckd.config import config_from_dict  # noqa: E402
from ckd.engine import Trainer  # noqa: E402

SECTIONS = ("equality", "epoch", "pairs", "suite", "cost", "compile", "report")
#: (label, method options, path) of the equality check
EQUALITY = [
    ("CKD, live teacher", {"name": "ckd"}, "fast"),
    ("CKD, teacher cache", {"name": "ckd"}, "cache"),
    ("KD", {"name": "kd"}, "fast"),
    ("DKD, warm-up over 30 steps", {"name": "dkd", "warmup_epochs": 0, "warmup_iters": 30}, "fast"),
    ("CRD (memory banks, random negatives)", {"name": "crd"}, "fast"),
    ("ReviewKD (learnable ABF modules, features)", {"name": "reviewkd"}, "fast"),
]
#: the largest relative difference of a step's total loss, graphed against eager, that passes
TOLERANCE = 0.05


def quiet(_msg: str) -> None:
    pass


def step_losses(cfg: dict[str, Any], steps: int) -> list[float]:
    """The total loss of each of the first ``steps`` steps of a run of ``cfg``."""
    torch.manual_seed(0)
    trainer = Trainer(config_from_dict(cfg), echo=quiet)
    trainer.distiller.train()
    out: list[torch.Tensor] = []
    for i, micro_batches in enumerate(trainer.task.loader.epoch(0)):
        [(_, terms)] = trainer.train_step(micro_batches, 0, i, trainer.schedule(i))
        out.append(torch.stack(list(terms.values())).sum())
        if len(out) == steps:
            break
    return torch.stack(out).tolist()


def section_equality(spec: BenchSpec, steps: int) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data, teacher = prepare(folder, spec)
        for label, method, path in EQUALITY:
            runs = {}
            for graphs in (False, True):
                name = f"{path}-graphs" if graphs else path
                cfg = variant_config(spec, folder, data, teacher, name, method["name"], 1)
                cfg["method"] = dict(method)
                cfg["run"]["out_dir"] = str(folder / f"eq-{label[:3]}-{graphs}")
                cfg["run"]["eval_teacher"] = False
                runs[graphs] = step_losses(cfg, steps)
            rel = [
                abs(a - b) / max(abs(a), 1e-6) for a, b in zip(runs[False], runs[True], strict=True)
            ]
            rows.append(
                {
                    "label": label,
                    "steps": len(rel),
                    "max_rel": max(rel),
                    "mean_rel": sum(rel) / len(rel),
                    "first_eager": runs[False][0],
                    "last_eager": runs[False][-1],
                    "last_graphs": runs[True][-1],
                    "pass": max(rel) <= TOLERANCE,
                }
            )
            print(
                f"equality {label}: max rel {rows[-1]['max_rel']:.2e}, mean "
                f"{rows[-1]['mean_rel']:.2e} over {len(rel)} steps -> "
                f"{'pass' if rows[-1]['pass'] else 'FAIL'}",
                flush=True,
            )
    return {"tolerance": TOLERANCE, "rows": rows}


def write_suite(folder: Path, spec: BenchSpec, seeds: list[int], data: Path, teacher: Path):
    base = variant_config(spec, folder, data, teacher, "fast", "ckd", 2)
    for key in ("teacher", "student", "method"):
        base.pop(key, None)
    base["run"] = {"cuda_graphs": "auto", "tensorboard": False, "progress": False}
    if spec.device == "cpu":
        base["run"]["device"] = "cpu"
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    suite = {
        "name": "throughput",
        "base": str(folder / "base.yaml"),
        "teacher": {"name": spec.teacher, "checkpoint": str(teacher)},
        "students": [spec.student],
        "methods": [{"label": "CKD", "method": {"name": "ckd"}}],
        "seeds": seeds,
    }
    path = folder / f"suite{len(seeds)}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def section_suite(spec: BenchSpec, runs: int, jobs: list[int], out: Path) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data, teacher = prepare(folder, spec)
        for n in jobs:
            seeds = list(range(2 if n == 1 else runs))
            suite = write_suite(folder, spec, seeds, data, teacher)
            root = folder / f"jobs{n}"
            cmd = [sys.executable, "-m", "ckd", "suite", str(suite), f"out_dir={root}"]
            cmd += ["--jobs", str(n)]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            (out / f"gpu_speed_suite_jobs{n}.log").write_text(proc.stdout + proc.stderr)
            record = {}
            if (root / "throughput.json").is_file():
                record = json.loads((root / "throughput.json").read_text())
            per_run = [
                json.loads(p.read_text()) for p in sorted(root.glob("CKD/*/seed*/result.json"))
            ]
            rows.append(
                {
                    "jobs": n,
                    "runs": len(per_run),
                    "exit_code": proc.returncode,
                    "command_seconds": seconds,
                    "train_seconds": record.get("seconds", seconds),
                    "runs_per_hour": 3600 * len(per_run) / record.get("seconds", seconds),
                    "cuda_mps": record.get("cuda_mps"),
                    "run_wall_s": [r["wall_time_s"] for r in per_run],
                    "last_top1": [r.get("last_top1") for r in per_run],
                }
            )
            print(f"suite --jobs {n}: {rows[-1]}", flush=True)
    one = next((r["runs_per_hour"] for r in rows if r["jobs"] == 1), None)
    for r in rows:
        r["vs_jobs1"] = r["runs_per_hour"] / one if one else None
    return {"rows": rows}


def section_cost(spec: BenchSpec, rounds: int, steps: int) -> dict[str, Any]:
    from ckd.bench.speed import bench_speed

    graphs = spec.device != "cpu" or os.environ.get("CKD_DRY_RUN") == "1"
    paths = ["fast", "cache"] + (["fast-graphs", "cache-graphs"] if graphs else [])
    variants = tuple((p, m) for p in paths for m in ("ckd", "kd"))
    spec.rounds, spec.steps, spec.warmup = rounds, steps, 3
    result = bench_speed(spec, variants, memory=False)
    return {
        "rows": result["rows"],
        "ckd_vs_kd": result["ckd_vs_kd"],
        "ckd_vs_kd_interleaved": result.get("ckd_vs_kd_interleaved", {}),
        "prime_s": result["prime_s"],
    }


def report(out: Path) -> str:
    """gpu_speed.md from the sections' JSON files found in ``out``."""
    lines = ["# Issue 14 on a GPU (benchmarks/gpu_speed.py)", ""]
    for name in SECTIONS[:-1]:
        path = out / f"gpu_speed_{name}.json"
        if not path.is_file():
            lines += [f"## {name}: not run (no gpu_speed_{name}.json)", ""]
            continue
        r = json.loads(path.read_text())
        m = r["machine"]
        lines += [
            f"## {name}",
            "",
            f"{m.get('gpu') or m['cpu']}, torch {m['torch']}, {r['seconds']:.0f} s: "
            f"`{r['command']}`",
            "",
        ]
        if name == "equality":
            lines += [
                f"graphs against eager, relative difference of each step's total loss "
                f"(pass: every step within {r['tolerance']}):",
                "",
                "| run | steps | max | mean | last loss eager / graphs | |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {x['label']} | {x['steps']} | {x['max_rel']:.1e} | {x['mean_rel']:.1e} | "
                f"{x['last_eager']:.4f} / {x['last_graphs']:.4f} | "
                f"{'pass' if x['pass'] else 'FAIL'} |"
                for x in r["rows"]
            ]
        elif name in ("epoch", "pairs", "compile"):
            lines += table(r["rows"])
        elif name == "suite":
            lines += [
                "| --jobs | runs | seconds | runs/hour | vs --jobs 1 | MPS | per-run wall (s) |",
                "|---|---|---|---|---|---|---|",
            ]
            for x in r["rows"]:
                walls = ", ".join(f"{w:.0f}" for w in x["run_wall_s"])
                vs = f"{x['vs_jobs1']:.2f}x" if x.get("vs_jobs1") else "-"
                lines.append(
                    f"| {x['jobs']} | {x['runs']} | {x['train_seconds']:.0f} | "
                    f"{x['runs_per_hour']:.0f} | {vs} | {x['cuda_mps']} | {walls} |"
                )
        elif name == "cost":
            lines += ["| path | method | images/s | ms/step |", "|---|---|---|---|"]
            lines += [
                f"| {LABELS.get(x['path'], x['path'])} | {x['method']} | "
                f"{x['images_per_s']:.0f} | {x['ms_per_step']:.1f} |"
                for x in r["rows"]
            ]
            inter = r.get("ckd_vs_kd_interleaved", {})
            for path, rel in r["ckd_vs_kd"].items():
                fine = f"{100 * inter[path]:+.1f}%" if path in inter else "-"
                lines.append(
                    f"\nCKD vs KD, {path}: {100 * rel:+.1f}% (rounds), {fine} (interleaved)"
                )
        lines.append("")
    text = "\n".join(lines)
    (out / "gpu_speed.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("section", choices=SECTIONS)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--n-train", type=int, default=50_000, help="images of the epoch sections")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of path (a)")
    p.add_argument("--cpu-dry-run", action="store_true", help="small, on the CPU, stand-in graphs")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.section == "report":
        print(report(out))
        return 0
    dry = args.cpu_dry_run
    if dry:  # the graphs' CPU stand-in (ckd.engine.graphs.CheckedEagerGraph), small sizes
        import ckd.engine.runtime as runtime

        runtime.cuda_graphs_enabled = lambda setting, *a: setting is not False
        os.environ["CKD_DRY_RUN"] = "1"
    elif not torch.cuda.is_available():
        sys.exit("no CUDA device here; --cpu-dry-run checks the script on the CPU")
    device = "cpu" if dry else "cuda"
    small = {"teacher": "resnet8", "student": "resnet8"} if dry else {}
    n_train = 256 if dry else args.n_train

    def spec(teacher: str, student: str, n: int | None = n_train) -> BenchSpec:
        return BenchSpec(
            teacher=small.get("teacher", teacher),
            student=small.get("student", student),
            device=device,
            num_workers=0 if dry else args.workers,
            n_train=n,
        )

    started = time.perf_counter()
    s = args.section
    if s == "equality":
        result = section_equality(spec("resnet32x4", "resnet8x4", 64 * 50), 8 if dry else 50)
    elif s == "epoch":
        paths = ["standard", "fast", "fast-graphs", "cache", "cache-graphs"]
        result = {"rows": epoch_rows(spec("resnet32x4", "resnet8x4"), paths, 1, 1)}
    elif s == "pairs":
        rows = []
        for teacher, student in (("resnet56", "resnet20"), ("resnet32x4", "ShuffleV2")):
            paths = ["fast", "fast-graphs", "cache-graphs"]
            rows += epoch_rows(spec(teacher, student), paths, 1, 1)
        result = {"rows": rows}
    elif s == "suite":
        jobs = [1, 2] if dry else [1, 4, 8]
        result = section_suite(spec("resnet32x4", "resnet8x4"), 4 if dry else 8, jobs, out)
    elif s == "cost":
        result = section_cost(spec("resnet56", "resnet20", None), 3, 4 if dry else 30)
    else:  # compile
        paths = ["fast-graphs", "fast-reduce-overhead"]
        result = {"rows": epoch_rows(spec("resnet32x4", "resnet8x4"), paths, 1, 1)}
    result |= {
        "command": " ".join(["python3", *sys.argv]),
        "machine": machine(),
        "seconds": time.perf_counter() - started,
        "dry_run": dry,
    }
    (out / f"gpu_speed_{s}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
