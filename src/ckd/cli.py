"""``ckd`` command line: train, eval, list, plot, demo.

Bad input (a config error, a missing file or dataset, a run folder that would be overwritten)
prints one line ``ckd: error: ...`` on stderr and exits with code 2, having written nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ckd.errors import ConfigError, RunDirError
from ckd.registry import UnknownNameError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    RunDirError,
    UnknownNameError,
    FileNotFoundError,  # includes ckd.data.DataNotFoundError
)


def _cmd_train(args: argparse.Namespace) -> int:
    from ckd.config import load_config
    from ckd.engine import Trainer

    config = args.config
    overrides = list(args.overrides)
    if Path(config).is_dir():  # a run folder: its saved config (with --resume to continue it)
        if not (Path(config) / "config.yaml").is_file():
            raise ConfigError(f"{config} is a folder without config.yaml")
        overrides = [f"run.out_dir={config}", *overrides]
        config = str(Path(config) / "config.yaml")
    cfg = load_config(config, overrides)
    result = Trainer(cfg, resume=args.resume).fit(stop_after=args.stop_after)
    if args.json:
        print(json.dumps(result))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from ckd.config import ModelConfig
    from ckd.data import build_dataset, dataset_info, subset
    from ckd.engine.build import amp_dtype, build_model, pick_device
    from ckd.engine.checkpoint import load_checkpoint
    from ckd.engine.evaluate import evaluate
    from ckd.models import MODELS

    path = Path(args.checkpoint)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = load_checkpoint(path)
    except Exception as e:  # not a checkpoint, or one weights_only refuses to unpickle
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: cannot be read as a checkpoint: {reason[:200]}") from None
    saved = ckpt.get("config") or {}
    model_name = args.model or saved.get("student", {}).get("name")
    data = dict(saved.get("data") or {})
    data_name = args.data or data.get("name")
    if model_name is None or data_name is None:
        raise ConfigError(
            f"{path} carries no config: give --model (one of the zoo) and --data "
            "(cifar100, cifar10, fashion_mnist)"
        )
    MODELS.get(model_name)
    root = args.data_root if args.data_root is not None else data.get("root")
    info = dataset_info(data_name)
    model = build_model(ModelConfig(model_name, str(path)), info)
    device = pick_device(args.device)
    dataset = subset(build_dataset(data_name, root, train=False, augment=False), args.subset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=0)
    res = evaluate(model.to(device), loader, device, amp_dtype(args.amp, device))
    print(
        f"{path}: {model_name} on {data_name} test ({res['n']} images): "
        f"top-1 {res['top1']:.2f}  top-5 {res['top5']:.2f}  loss {res['loss']:.4f}"
    )
    if args.json:
        print(json.dumps({"checkpoint": str(path), "model": model_name, "data": data_name, **res}))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from ckd.config import shipped_configs
    from ckd.data import DATASETS
    from ckd.methods import METHODS
    from ckd.models import MODELS, count_parameters, create_model

    what = args.what
    if what in ("all", "models"):
        print("models (parameters for 100 classes):")
        for name in MODELS:
            print(f"  {name:<12} {count_parameters(create_model(name, 100)):>12,}")
    if what in ("all", "methods"):
        print("methods:")
        for name, cls in METHODS.items():
            print(f"  {name:<10} {cls.description}  [{cls.paper}]")
    if what in ("all", "datasets"):
        print("datasets:")
        for name in DATASETS:
            print(f"  {name}")
    if what in ("all", "configs"):
        print("configs (ckd train NAME):")
        for name in shipped_configs():
            print(f"  {name}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from ckd.plots import plot_curves

    out = plot_curves([Path(p) for p in args.runs], Path(args.out))
    print(f"wrote {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ckd.demo import run_demo

    run_demo(Path(args.out), data_root=args.data_root, overrides=list(args.overrides))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ckd", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a teacher (method vanilla) or distill a student")
    t.add_argument("config", help="a YAML file, a shipped config name, or a run folder")
    t.add_argument("overrides", nargs="*", help="key.path=value, e.g. optim.lr=0.1")
    t.add_argument("--resume", action="store_true", help="continue the run in run.out_dir")
    t.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="EPOCH",
        help="stop after this epoch (continue later with --resume)",
    )
    t.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="top-1/top-5 of a checkpoint on a test set")
    e.add_argument("checkpoint")
    e.add_argument("--model", help="zoo model name (default: from the checkpoint's config)")
    e.add_argument("--data", help="dataset name (default: from the checkpoint's config)")
    e.add_argument("--data-root", default=None)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--subset", type=int, default=None, help="evaluate on N test images")
    e.add_argument("--device", default="auto")
    e.add_argument("--amp", default="none", choices=["auto", "none", "bf16", "fp16"])
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_cmd_eval)

    ls = sub.add_parser("list", help="models, methods, datasets and shipped configs")
    ls.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", "models", "methods", "datasets", "configs"],
    )
    ls.set_defaults(func=_cmd_list)

    pl = sub.add_parser("plot", help="training curves of run folders to a PNG")
    pl.add_argument("runs", nargs="+")
    pl.add_argument("--out", default="curves.png")
    pl.set_defaults(func=_cmd_plot)

    d = sub.add_parser("demo", help="offline demo: Fashion-MNIST teacher, then CE / KD / CKD")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--data-root", default=None)
    d.add_argument("overrides", nargs="*", help="key.path=value applied to every run")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"ckd: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "ckd: interrupted; the last checkpoint is kept (continue with --resume)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
