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
    from ckd.engine.distributed import shutdown

    config = args.config
    overrides = list(args.overrides)
    if Path(config).is_dir():  # a run folder: its saved config (with --resume to continue it)
        if not (Path(config) / "config.yaml").is_file():
            raise ConfigError(f"{config} is a folder without config.yaml")
        overrides = [f"run.out_dir={config}", *overrides]
        config = str(Path(config) / "config.yaml")
    is_main = True
    if _is_detection_config(config, overrides):
        from ckd.detection.config import load_det_config
        from ckd.detection.trainer import DetTrainer

        det = load_det_config(config, overrides)
        try:
            det_trainer = DetTrainer(det, resume=args.resume)
            is_main = det_trainer.dist.is_main
            result = det_trainer.fit(stop_after=args.stop_after)
        finally:
            shutdown()
    else:
        cfg = load_config(config, overrides)
        try:
            trainer = Trainer(cfg, resume=args.resume)
            is_main = trainer.dist.is_main
            result = trainer.fit(stop_after=args.stop_after)
        finally:
            shutdown()  # leave the process group of a torchrun launch (no-op otherwise)
    if args.json and is_main:
        print(json.dumps(result))
    return 0


def _is_detection_config(config: str, overrides: list[str]) -> bool:
    """Whether the config (file or shipped name, with overrides) says ``task: detection``."""
    from ckd.config import apply_overrides, read_yaml, resolve_config_path
    from ckd.detection.config import is_detection

    path = resolve_config_path(config).resolve()
    return is_detection(apply_overrides(read_yaml(path), overrides))


def _cmd_make_shapes(args: argparse.Namespace) -> int:
    from ckd.detection.shapes import make_shapes

    for key in ("train", "val", "size", "max_shapes"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1; got {getattr(args, key)}")
    root = make_shapes(args.out, args.train, args.val, args.size, args.max_shapes, args.seed)
    print(f"wrote {root}: {args.train} train / {args.val} val images ({args.size}x{args.size})")
    return 0


def _cmd_make_folder(args: argparse.Namespace) -> int:
    from ckd.data.make_folder import make_fashion_mnist_folder

    root = make_fashion_mnist_folder(
        args.out, args.train_per_class, args.val_per_class, args.seed, args.source, args.force
    )
    print(
        f"wrote {root}: {10 * args.train_per_class} train / {10 * args.val_per_class} val "
        "Fashion-MNIST images (28x28 PNG, 10 class folders); train on it with data.name=folder "
        f"data.root={root}"
    )
    return 0


def _cmd_fetch_weights(args: argparse.Namespace) -> int:
    from ckd.models.pretrained import WeightsLocation

    for name in args.models:
        print(f"{name}: {WeightsLocation(name).fetch()}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ckd.export import ExportCheckError, export

    try:
        out, meta = export(args.source, args.format, args.out, args.force)
    except ExportCheckError as e:
        print(f"ckd: error: {e}", file=sys.stderr)
        return 1
    i, c = meta["input"], meta["check"]
    shape = "x".join(map(str, i["shape"]))
    print(
        f"wrote {out} and {out.name}.json: {meta['model']} (epoch {meta['epoch']}), input "
        f"float32 {shape} ({i['layout']}), normalised with mean {i['normalize']['mean']} std "
        f"{i['normalize']['std']}, output logits Nx{meta['output']['shape'][1]}"
    )
    print(
        f"checked with {c['checked_with']} against PyTorch on {c['batch'][0]} inputs: max "
        f"|difference| {c['max_abs_diff']:.3g} (tolerance {c['tolerance']:.3g})"
    )
    return 0


def _load_for_eval(args: argparse.Namespace, path_arg: str, model_arg: str | None = None):
    """(model, dataset name, data root, test loader) for a checkpoint: what its saved config
    says (model, input normalisation, dataset), or ``--model``/``--data`` for a foreign one."""
    import torch

    from ckd.config import DataConfig, ModelConfig
    from ckd.data import resolve_dataset, subset
    from ckd.engine.build import build_model
    from ckd.engine.checkpoint import load_checkpoint
    from ckd.models import MODELS
    from ckd.schema import build

    path = Path(path_arg)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = load_checkpoint(path)
    except Exception as e:  # not a checkpoint, or one weights_only refuses to unpickle
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: cannot be read as a checkpoint: {reason[:200]}") from None
    saved = ckpt.get("config") or {}
    student = dict(saved.get("student") or {})
    model_name = model_arg or student.get("name")
    data = dict(saved.get("data") or {})
    data_name = args.data or data.get("name")
    if model_name is None or data_name is None:
        raise ConfigError(
            f"{path} carries no config: give --model (one of the zoo) and --data "
            "(cifar100, cifar10, fashion_mnist)"
        )
    MODELS.get(model_name)
    same = model_name == student.get("name")
    model_cfg = ModelConfig(
        model_name,
        str(path),
        input_mean=student.get("input_mean") if same else None,
        input_std=student.get("input_std") if same else None,
    )
    root = args.data_root if args.data_root is not None else data.get("root")
    # the run's own data settings (a folder's image size, channels, split), for its dataset
    own = {k: v for k, v in data.items() if k in DataConfig.__dataclass_fields__}
    spec = resolve_dataset(
        build(
            DataConfig,
            {**(own if data_name == data.get("name") else {}), "name": data_name, "root": root},
            "data",
        )
    )
    model = build_model(model_cfg, spec.info)
    dataset = subset(spec.build(root, False, False, False), args.subset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=0)
    return model, model_name, data_name, loader


def _cmd_eval(args: argparse.Namespace) -> int:
    from ckd.engine.build import amp_dtype, pick_device
    from ckd.engine.evaluate import evaluate

    model, model_name, data_name, loader = _load_for_eval(args, args.checkpoint, args.model)
    device = pick_device(args.device)
    res = evaluate(model.to(device), loader, device, amp_dtype(args.amp, device))
    path = args.checkpoint
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
        from ckd.detection.methods import DET_METHODS

        print("detection methods (task: detection):")
        for name, cls in DET_METHODS.items():
            print(f"  {name:<10} {cls.description}  [{cls.paper}]")
    if what in ("all", "datasets"):
        print("datasets:")
        for name in DATASETS:
            print(f"  {name}")
    if what in ("all", "configs"):
        print("configs (ckd train NAME):")
        for name in shipped_configs() + shipped_configs("detection"):
            print(f"  {name}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from ckd import plots, viz
    from ckd.engine.build import pick_device

    out = Path(args.out)
    if args.kind == "curves":
        plots.plot_curves([Path(p) for p in args.runs], out)
    elif args.kind == "bars":
        from ckd.report import find_runs

        rows = [r for r in find_runs([Path(p) for p in args.runs]) if r["label"] != "teacher"]
        if not rows:
            raise ConfigError(f"no finished runs under {', '.join(args.runs)}")
        plots.plot_bars(rows, out)
    else:
        device = pick_device(args.device)
        limit = args.subset
        student, s_name, data_name, loader = _load_for_eval(args, args.student, args.model)
        s_logits, s_embed, targets = viz.collect_outputs(student.to(device), loader, device, limit)
        if args.kind == "tsne":
            viz.plot_tsne(s_embed, targets, out, f"t-SNE of {s_name} embeddings ({data_name})")
        else:
            teacher, t_name, _, loader = _load_for_eval(args, args.teacher, args.teacher_model)
            t_logits, _, _ = viz.collect_outputs(teacher.to(device), loader, device, limit)
            diff = viz.correlation_difference(t_logits, s_logits)
            viz.plot_correlation_difference(diff, out, f"{t_name} vs {s_name} ({data_name})")
            print(f"mean |corr(teacher) - corr(student)| = {diff.mean():.4f}")
    print(f"wrote {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ckd.suite import main_report

    main_report(list(args.runs), args.out)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ckd.demo import run_demo

    run_demo(Path(args.out), data_root=args.data_root, overrides=list(args.overrides))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.what != "speed":
        from ckd.suite import run_suite

        run_suite(args.what, list(args.overrides))
        return 0
    from ckd.engine.bench import (
        DEFAULT_VARIANTS,
        METHOD_LABELS,
        PATHS,
        BenchSpec,
        bench_speed,
        format_report,
    )
    from ckd.methods import METHODS
    from ckd.models import MODELS

    for name in (args.teacher, args.student):
        MODELS.get(name)
    for key in ("batch_size", "steps", "warmup", "rounds", "workers", "threads"):
        value, least = getattr(args, key), 0 if key in ("warmup", "workers") else 1
        if value is not None and value < least:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= {least}; got {value}")
    variants = DEFAULT_VARIANTS
    if args.variants:
        variants = tuple(tuple(v.split(":", 1)) for v in args.variants.split(","))
        for v in variants:
            if len(v) != 2 or v[0] not in PATHS or v[1] not in METHOD_LABELS:
                raise ConfigError(
                    f"--variants: {':'.join(v)!r} is not PATH:METHOD with PATH one of "
                    f"{', '.join(PATHS)} and METHOD one of {', '.join(METHOD_LABELS)}"
                )
            METHODS.get(v[1])
            if v[0].startswith("cache") and v[1] == "vanilla":
                raise ConfigError(f"--variants: {':'.join(v)} has no teacher to cache")
    spec = BenchSpec(
        teacher=args.teacher,
        student=args.student,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        rounds=args.rounds,
        num_classes=args.classes,
        num_workers=args.workers,
        device=args.device,
        threads=args.threads,
    )
    result = bench_speed(spec, variants, memory=not args.no_memory, profile=args.profile, echo=_say)
    report = format_report(result)
    print(report)
    if args.profile:
        for path, table in result.get("profiles", {}).items():
            print(f"\ntorch.profiler, {PATHS[path]} (CKD), top operators by self time:\n{table}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _say(msg: str) -> None:
    print(msg, flush=True)


def _cmd_cache(args: argparse.Namespace) -> int:
    import shutil

    from ckd.config import load_config

    if args.action == "info":
        manifest = Path(args.config) / "manifest.json"
        if not manifest.is_file():
            raise ConfigError(f"{args.config} is not a teacher cache (no manifest.json)")
        m = json.loads(manifest.read_text())
        feats = "with features" if m.get("features") else "logits only"
        print(
            f"{args.config}: teacher {m['teacher']['name']} "
            f"(sha256 {m['teacher']['checkpoint_sha256'][:12]}), {m['dataset']['name']} "
            f"{m['dataset']['num_train']} train views x {m['epochs']} epochs, "
            f"aug_seed {m['aug_seed']}, {feats}, built on {m['built']['device']} "
            f"in {m['built']['seconds']} s"
        )
        return 0
    import torch

    from ckd.data.fast import memory_data
    from ckd.engine.build import build_data, build_model, pick_device
    from ckd.engine.cache import build_cache, cache_identity, open_cache
    from ckd.engine.trainer import channels_last_enabled

    overrides = [*args.overrides, "data.loader=fast"]
    if args.out:
        overrides.append(f"run.teacher_cache={args.out}")
    cfg = load_config(args.config, overrides)
    folder = cfg.run.teacher_cache
    if folder is None:
        raise ConfigError("cache build: give --out DIR or set run.teacher_cache")
    if cfg.teacher is None:
        raise ConfigError(f"cache build: method {cfg.method.name!r} uses no teacher")
    device = pick_device(cfg.run.device)
    channels_last = channels_last_enabled(cfg.run.channels_last, device)
    data = build_data(cfg.data, seed=cfg.run.seed)
    train = memory_data(data.train, device, cfg.data.name)
    teacher = build_model(cfg.teacher, data.info).to(device).eval()
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    identity = cache_identity(cfg, train)
    if args.force and Path(folder).exists():
        shutil.rmtree(folder)
    cache = open_cache(folder, identity, cfg.optim.epochs)
    if cache is not None and (cache.has_features or not args.features):
        print(f"{folder}: up to date ({cache.epochs} epochs); nothing to do")
        return 0
    if cache is not None:
        raise ConfigError(f"{folder} holds logits only; rebuild it with --features --force")
    cache = build_cache(
        folder,
        teacher,
        train,
        identity,
        cfg.optim.epochs,
        batch_size=max(cfg.data.batch_size, cfg.data.test_batch_size),
        channels_last=channels_last,
        features=args.features,
        echo=_say,
    )
    size = sum(f.stat().st_size for f in Path(folder).iterdir()) / 2**20
    print(
        f"wrote {folder}: {cache.epochs} epochs x {len(train)} views, {size:.1f} MiB, "
        f"in {cache.manifest['built']['seconds']} s"
    )
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
        help="stop after this epoch (detection: iteration); continue later with --resume",
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

    pl = sub.add_parser("plot", help="figures as PNG: curves, bars, corr, tsne")
    kinds = pl.add_subparsers(dest="kind", required=True)
    pc = kinds.add_parser("curves", help="test accuracy and loss terms per epoch of runs")
    pc.add_argument("runs", nargs="+")
    pc.add_argument("--out", default="curves.png")
    pb = kinds.add_parser("bars", help="mean ± std of the last-epoch top-1 per method")
    pb.add_argument("runs", nargs="+", help="run or suite folders")
    pb.add_argument("--out", default="bars.png")
    for kind, text in (
        ("corr", "|teacher - student| class-correlation matrix of the logits"),
        ("tsne", "t-SNE of a student's pooled embeddings"),
    ):
        pk = kinds.add_parser(kind, help=text)
        if kind == "corr":
            pk.add_argument("teacher", help="teacher checkpoint")
            pk.add_argument("--teacher-model", default=None, help="for a foreign checkpoint")
        pk.add_argument("student", help="student checkpoint")
        pk.add_argument("--model", default=None, help="student model, for a foreign checkpoint")
        pk.add_argument("--data", default=None)
        pk.add_argument("--data-root", default=None)
        pk.add_argument("--subset", type=int, default=2000, help="test images used")
        pk.add_argument("--batch-size", type=int, default=256)
        pk.add_argument("--device", default="auto")
        pk.add_argument("--out", default=f"{kind}.png")
    pl.set_defaults(func=_cmd_plot)

    r = sub.add_parser("report", help="results.csv and report.md from finished runs")
    r.add_argument("runs", nargs="+", help="run or suite folders")
    r.add_argument("--out", default=None, help="also write results.csv/report.md here")
    r.set_defaults(func=_cmd_report)

    d = sub.add_parser("demo", help="offline demo: Fashion-MNIST teacher, then CE / KD / CKD")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--data-root", default=None)
    d.add_argument("overrides", nargs="*", help="key.path=value applied to every run")
    d.set_defaults(func=_cmd_demo)

    b = sub.add_parser(
        "bench", help="SUITE.yaml: a fair multi-seed suite; speed: input paths side by side"
    )
    b.add_argument("what", help="a suite YAML file, or 'speed'")
    b.add_argument("overrides", nargs="*", help="suite: key.path=value for the suite file")
    b.add_argument("--teacher", default="resnet56")
    b.add_argument("--student", default="resnet20")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--steps", type=int, default=15, help="timed steps per variant and round")
    b.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--classes", type=int, default=100)
    b.add_argument("--workers", type=int, default=2, help="DataLoader workers of path (a)")
    b.add_argument("--device", default="auto")
    b.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    b.add_argument(
        "--variants",
        default=None,
        help="PATH:METHOD,... with PATH standard|fast|fast-compiled|cache|cache-compiled and "
        "METHOD ckd|kd|dkd|crd|vanilla (default: the paths on ckd, then fast:kd,cache:kd,"
        "fast:vanilla)",
    )
    b.add_argument("--profile", action="store_true", help="also a time breakdown and profiles")
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    b.add_argument("--json", default=None, metavar="PATH", help="also write the figures here")
    b.set_defaults(func=_cmd_bench)

    ms = sub.add_parser(
        "make-shapes", help="write the small COCO-format shapes dataset (detection demo, tests)"
    )
    ms.add_argument("--out", default="data/shapes", help="dataset folder (COCO layout)")
    ms.add_argument("--train", type=int, default=300, help="training images")
    ms.add_argument("--val", type=int, default=60, help="validation images")
    ms.add_argument("--size", type=int, default=96, help="image side in pixels")
    ms.add_argument("--max-shapes", type=int, default=3, help="most shapes per image")
    ms.add_argument("--seed", type=int, default=0)
    ms.set_defaults(func=_cmd_make_shapes)

    mf = sub.add_parser(
        "make-folder",
        help="write an image-folder dataset (ROOT/{train,val}/<class>/*.png) from Fashion-MNIST",
    )
    mf.add_argument("--out", default="data/fmnist_folder", help="dataset folder to write")
    mf.add_argument("--train-per-class", type=int, default=600, help="training images per class")
    mf.add_argument("--val-per-class", type=int, default=100, help="val images per class")
    mf.add_argument("--seed", type=int, default=0, help="seed of the sample")
    mf.add_argument("--source", default=None, help="folder of the Fashion-MNIST IDX files")
    mf.add_argument("--force", action="store_true", help="replace an existing --out")
    mf.set_defaults(func=_cmd_make_folder)

    fw = sub.add_parser(
        "fetch-weights",
        help="download the published weights of tv:/timm: models into the local caches",
    )
    fw.add_argument("models", nargs="+", help="e.g. tv:resnet18 timm:deit_tiny_patch16_224")
    fw.set_defaults(func=_cmd_fetch_weights)

    ex = sub.add_parser(
        "export", help="write a run's student as ONNX, TorchScript or safetensors, checked"
    )
    ex.add_argument("source", help="a run folder (its last.pt) or a checkpoint of a run")
    ex.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors"])
    ex.add_argument(
        "--out", default=None, help="output file (default: the checkpoint's, e.g. last.onnx)"
    )
    ex.add_argument("--force", action="store_true", help="replace existing output files")
    ex.set_defaults(func=_cmd_export)

    c = sub.add_parser("cache", help="teacher-output cache: build one, or describe one")
    c.add_argument("action", choices=["build", "info"])
    c.add_argument("config", help="build: a config (as for train); info: a cache folder")
    c.add_argument("overrides", nargs="*", help="key.path=value, as for train")
    c.add_argument("--out", default=None, help="the cache folder (default: run.teacher_cache)")
    c.add_argument("--features", action="store_true", help="also the teacher's features")
    c.add_argument("--force", action="store_true", help="replace what is in the folder")
    c.set_defaults(func=_cmd_cache)
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
