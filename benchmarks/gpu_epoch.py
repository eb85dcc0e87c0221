"""Epoch time of resnet32x4 -> resnet8x4 (CKD) on CIFAR-sized data, on a GPU: (a) the standard
pipeline, (b) the fast path, (c) the fast path with the teacher cache.

Prepared for an NVIDIA H100 / H200; takes a few minutes there::

    .venv/bin/python benchmarks/gpu_epoch.py --out benchmarks/results
    # writes gpu_epoch.json and gpu_epoch.md (the figures, the card, the command)

The data are 50,000 generated 32x32 RGB images of 100 classes in the CIFAR-100 on-disk format
(so path (a) reads them through torchvision's CIFAR class and PIL transforms, as for the real
data); the teacher is randomly initialised (speed does not depend on the weights). Each path
is a real ``Trainer``: one warm-up epoch (cuDNN, allocator, compile), then the timed epoch(s),
training only (the per-epoch evaluation is not part of the figure). Paths:

- (a) standard: PIL transforms in ``--workers`` DataLoader workers, fp32 (PyTorch's defaults,
  which allow TF32 convolutions), contiguous layout, the teacher run on every step;
- (b) fast: ``data.loader=fast``, ``run.amp=auto`` (bf16), ``run.channels_last=auto`` (on);
- (c) fast + cache: (b) with ``run.teacher_cache`` (its build time is reported apart);
- with ``--compile``, also (b) and (c) under ``run.compile=true``.

It runs on the CPU as well (``--device cpu --n-train 512 --teacher resnet8 --student resnet8``),
which is how it was checked where no GPU was available.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from ckd.bench.speed import BenchSpec, machine, prepare, variant_config
from ckd.config import config_from_dict
from ckd.engine import Trainer

LABELS = {"standard": "(a) standard", "fast": "(b) fast", "cache": "(c) fast + cache"}


def quiet(_msg: str) -> None:
    pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64, help="the CKD recipe's batch")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of path (a)")
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per path")
    p.add_argument("--paths", default="standard,fast,cache")
    p.add_argument("--compile", action="store_true", help="also (b) and (c) compiled")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here; --device cpu runs a small check instead")
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
    variants = [(path, False) for path in args.paths.split(",")]
    if args.compile:
        variants += [(path, True) for path in ("fast", "cache") if path in args.paths]
    epochs = args.warmup_epochs + args.epochs
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        data, teacher = prepare(folder, spec)
        print(
            f"data: {args.n_train} images written in {time.perf_counter() - t0:.0f} s", flush=True
        )
        for path, compiled in variants:
            cfg = variant_config(spec, folder, data, teacher, path, "ckd", epochs)
            cfg["run"]["compile"] = compiled
            cfg["run"]["out_dir"] = str(folder / f"run-{path}-{compiled}")
            t0 = time.perf_counter()
            trainer = Trainer(config_from_dict(cfg), echo=quiet)
            setup_s = time.perf_counter() - t0
            if trainer.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(trainer.device)
            times, speeds = [], []
            for epoch in range(epochs):
                row = trainer.train_one_epoch(epoch)
                times.append(row["train_time_s"])
                speeds.append(row["images_per_s"])
                print(
                    f"{LABELS[path]}{' compiled' if compiled else ''}: epoch {epoch + 1}/{epochs} "
                    f"{row['train_time_s']:.2f} s ({row['images_per_s']:.0f} images/s)",
                    flush=True,
                )
            timed = times[args.warmup_epochs :]
            rows.append(
                {
                    "path": path,
                    "compiled": compiled,
                    "epoch_s": min(timed),
                    "epoch_s_all": times,
                    "images_per_s": max(speeds[args.warmup_epochs :]),
                    "setup_s": setup_s,
                    "amp": str(trainer.amp).replace("torch.", "") if trainer.amp else "fp32",
                    "channels_last": trainer.channels_last,
                    "cuda_peak_mib": torch.cuda.max_memory_allocated(trainer.device) / 2**20
                    if trainer.device.type == "cuda"
                    else None,
                }
            )
            del trainer
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    result = {
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "args": vars(args),
        "machine": machine(),
        "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "rows": rows,
        "total_s": time.perf_counter() - started,
    }
    (out / "gpu_epoch.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"{args.teacher} -> {args.student} (CKD), {args.n_train} images 32x32, "
        f"{args.classes} classes, batch {args.batch_size}; device {result['device_name']}; "
        f"torch {torch.__version__}; best of {args.epochs} timed epoch(s) after "
        f"{args.warmup_epochs} warm-up",
        "",
        "| path | precision, layout | epoch (s) | images/s | vs (a) | set-up (s) | peak CUDA MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    base = next((r["epoch_s"] for r in rows if r["path"] == "standard"), None)
    for r in rows:
        label = LABELS[r["path"]] + (", compiled" if r["compiled"] else "")
        layout = "channels_last" if r["channels_last"] else "contiguous"
        ratio = f"{base / r['epoch_s']:.2f}x" if base else "-"
        mem = f"{r['cuda_peak_mib']:.0f}" if r["cuda_peak_mib"] is not None else "-"
        lines.append(
            f"| {label} | {r['amp']}, {layout} | {r['epoch_s']:.2f} | {r['images_per_s']:.0f} | "
            f"{ratio} | {r['setup_s']:.1f} | {mem} |"
        )
    lines += ["", f"command: `{result['command']}`", ""]
    (out / "gpu_epoch.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
