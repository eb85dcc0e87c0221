"""Epoch time of a distillation pair (CKD) on CIFAR-sized data, on a GPU: the input paths of
``ckd bench speed`` side by side, a whole epoch each.

Prepared for an NVIDIA H100 / H200::

    python3 benchmarks/gpu_epoch.py --out benchmarks/results
    # writes gpu_epoch.json and gpu_epoch.md (the figures, the card, the command)

The data are 50,000 generated 32x32 RGB images of 100 classes in the CIFAR-100 on-disk format
(so path (a) reads them through torchvision's CIFAR class and PIL transforms, as for the real
data); the teacher is randomly initialised (speed does not depend on the weights). Each path
is a real ``Trainer``: one warm-up epoch (cuDNN, allocator, compile, graph capture), then the
timed epoch(s), training only as ``fit`` runs it (``ckd.bench.timing.train_epoch``: no
evaluation). ``--paths`` takes the path names of ``ckd bench speed --variants``:

- standard: PIL transforms in ``--workers`` DataLoader workers, fp32 (PyTorch's defaults,
  which allow TF32 convolutions), contiguous layout, the teacher run on every step;
- fast: ``data.loader=fast``, ``run.amp=auto`` (bf16), ``run.channels_last=auto`` (on);
- fast-graphs: fast with ``run.cuda_graphs=true`` (the whole step one CUDA graph);
- cache, cache-graphs: the same with ``run.teacher_cache`` (its build time is reported apart);
- fast-compiled, cache-compiled: with ``run.compile=true``; fast-reduce-overhead: with
  ``run.compile=reduce-overhead`` (torch.compile's own CUDA graphs).

It runs on the CPU as well (``--device cpu --n-train 512 --teacher resnet8 --student resnet8
--paths standard,fast,cache``), which is how it was checked where no GPU was available.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ckd.bench.speed import machine, prepare, variant_config
from ckd.bench.timing import BenchSpec, train_epoch
from ckd.config import config_from_dict
from ckd.engine import Trainer

LABELS = {
    "standard": "(a) standard",
    "fast": "(b) fast",
    "fast-compiled": "(b+) fast, compiled",
    "fast-reduce-overhead": "(b+) fast, compiled reduce-overhead",
    "fast-graphs": "(b*) fast, one CUDA graph",
    "cache": "(c) fast + cache",
    "cache-compiled": "(c+) fast + cache, compiled",
    "cache-graphs": "(c*) fast + cache, one CUDA graph",
}


def quiet(_msg: str) -> None:
    pass


def epoch_rows(
    spec: BenchSpec,
    paths: list[str],
    warmup_epochs: int,
    epochs: int,
    method: str = "ckd",
    echo: Any = print,
) -> list[dict[str, Any]]:
    """One row per path: the best timed epoch after ``warmup_epochs``, set-up seconds, peak
    CUDA memory, the settings the run resolved to."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        data, teacher = prepare(folder, spec)
        echo(f"data: {spec.train_size()} images written in {time.perf_counter() - t0:.0f} s")
        for path in paths:
            base = path.replace("-reduce-overhead", "")
            cfg = variant_config(spec, folder, data, teacher, base, method, warmup_epochs + epochs)
            if path.endswith("-reduce-overhead"):
                cfg["run"]["compile"] = "reduce-overhead"
            cfg["run"]["out_dir"] = str(folder / f"run-{path}")
            t0 = time.perf_counter()
            trainer = Trainer(config_from_dict(cfg), echo=quiet)
            setup_s = time.perf_counter() - t0
            rt = trainer.runtime
            if rt.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(rt.device)
            times = []
            for epoch in range(warmup_epochs + epochs):
                times.append(train_epoch(trainer, epoch))
                echo(
                    f"{spec.teacher} -> {spec.student} {LABELS[path]}: epoch {epoch + 1}/"
                    f"{warmup_epochs + epochs} {times[-1]:.2f} s "
                    f"({trainer.task.loader.num_samples / times[-1]:.0f} images/s)"
                )
            timed = times[warmup_epochs:]
            rows.append(
                {
                    "pair": f"{spec.teacher} -> {spec.student}",
                    "path": path,
                    "method": method,
                    "epoch_s": min(timed),
                    "epoch_s_all": times,
                    "images_per_s": trainer.task.loader.num_samples / min(timed),
                    "setup_s": setup_s,
                    "amp": str(rt.amp).replace("torch.", "") if rt.amp else "fp32",
                    "channels_last": rt.channels_last,
                    "compile": rt.compile,
                    "cuda_graphs": rt.cuda_graphs,
                    "cuda_peak_mib": torch.cuda.max_memory_allocated(rt.device) / 2**20
                    if rt.device.type == "cuda"
                    else None,
                }
            )
            del trainer
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as a Markdown table, each against the standard path of its pair."""
    lines = [
        "| pair | path | precision, layout | epoch (s) | images/s | vs (a) | set-up (s) | "
        "peak CUDA MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = next(
            (x["epoch_s"] for x in rows if x["pair"] == r["pair"] and x["path"] == "standard"),
            None,
        )
        layout = "channels_last" if r["channels_last"] else "contiguous"
        ratio = f"{base / r['epoch_s']:.2f}x" if base else "-"
        mem = f"{r['cuda_peak_mib']:.0f}" if r["cuda_peak_mib"] is not None else "-"
        lines.append(
            f"| {r['pair']} | {LABELS[r['path']]} | {r['amp']}, {layout} | {r['epoch_s']:.2f} | "
            f"{r['images_per_s']:.0f} | {ratio} | {r['setup_s']:.1f} | {mem} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64, help="the CKD recipe's batch")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of path (a)")
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per path")
    p.add_argument("--paths", default="standard,fast,fast-graphs,cache,cache-graphs")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here; --device cpu runs a small check instead")
    paths = args.paths.split(",")
    unknown = [x for x in paths if x not in LABELS]
    if unknown:
        sys.exit(f"--paths: unknown {unknown}; known: {', '.join(LABELS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = BenchSpec(
        teacher=args.teacher,
        student=args.student,
        batch_size=args.batch_size,
        num_classes=args.classes,
        num_workers=args.workers,
        device=args.device,
        n_train=args.n_train,
    )
    started = time.perf_counter()
    rows = epoch_rows(spec, paths, args.warmup_epochs, args.epochs)
    result = {
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "args": vars(args),
        "machine": machine(),
        "rows": rows,
        "total_s": time.perf_counter() - started,
    }
    (out / "gpu_epoch.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        f"CKD, {args.n_train} images 32x32, {args.classes} classes, batch {args.batch_size}; "
        f"{m.get('gpu') or m['cpu']}; torch {torch.__version__}; best of {args.epochs} timed "
        f"epoch(s) after {args.warmup_epochs} warm-up",
        "",
        *table(rows),
        "",
        f"command: `{result['command']}`",
        "",
    ]
    (out / "gpu_epoch.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
