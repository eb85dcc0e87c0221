"""``ckd`` command line: parses the arguments and dispatches to the package; nothing else.

Bad input (a config error, a missing, corrupt or unreadable file or dataset, a run folder that
would be overwritten or that another process uses) prints one line ``ckd: error: ...`` on stderr
and exits with code 2, having written nothing. A full disk is one line and exit code 2 as well
(the file being written is left as it was); a closed standard output (``ckd list | head``) ends
quietly with 141, as a process killed by SIGPIPE. A run that diverges (a non-finite loss,
weight or evaluation) is one line and exit code 3. SIGINT and SIGTERM stop a run at the next
step boundary with a resumable checkpoint: one line, exit code 130 or 143 (128 + the signal).
``key=value`` overrides may come before or after flags. Each command imports what it needs
when it runs (``# deferred: start-up``), so that ``ckd --help``, ``ckd --version`` and
``ckd list models`` answer at once, without loading torch.

Why over 400 lines: it declares the parsers of thirteen commands (their flags, defaults and help
texts) and one short dispatch function each; what the commands do lives in the package.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from ckd.errors import EXIT_DIVERGED, USER_ERRORS, ConfigError, Diverged, Interrupted, one_line
from ckd.signals import terminate_as_interrupt

#: OS errors of a full disk, as the one line they give.
DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def _say(msg: str) -> None:
    print(msg, flush=True)


def _cmd_train(args: argparse.Namespace) -> int:
    if args.print_config:  # a dry run: the resolved config, then notes on its files
        import ckd.tasks  # noqa: F401  (deferred, as every import here: `ckd --help` stays fast)
        from ckd.config import check_files, config_yaml, load_train_config

        cfg = load_train_config(args.config, args.overrides, files=False)
        print(config_yaml(cfg), end="", flush=True)
        try:
            check_files(cfg, data=True)
        except USER_ERRORS as e:  # what a run would need first: a note, not a failure
            print(f"ckd: note: {_with_hint(one_line(e))} (a run would stop here)", file=sys.stderr)
        return 0
    from ckd.api import run_train  # deferred: start-up

    try:
        run = run_train(
            args.config, args.overrides, resume=args.resume, stop_after=args.stop_after, echo=_say
        )
    except ConfigError as e:
        e.args = (_with_hint(one_line(e)),)
        raise
    if args.json and run.main:
        print(json.dumps(run.result))
    return 0


#: Where ``ckd demo`` (``make demo``) writes its teacher, for the hint of :func:`_with_hint`.
DEMO_TEACHER = Path("runs/demo/teacher/last.pt")


def _with_hint(line: str) -> str:
    """A missing ``teacher.checkpoint``'s line, with the demo's teacher named when it is here
    (the shipped Fashion-MNIST configs name ``ckd train fashion_mnist/teacher``'s run)."""
    if line.startswith("teacher.checkpoint:") and "does not exist" in line:
        if DEMO_TEACHER.is_file():
            return f"{line}; `make demo` trained one: add teacher.checkpoint={DEMO_TEACHER}"
        return f"{line}; train the teacher first, or give teacher.checkpoint=FILE"
    return line


def _cmd_eval(args: argparse.Namespace) -> int:
    from ckd.tasks.classification import evaluate_checkpoint  # deferred: start-up

    found, res = evaluate_checkpoint(
        args.checkpoint,
        args.model,
        args.data,
        args.data_root,
        args.subset,
        args.full_test,
        args.batch_size,
        args.device,
        args.amp,
    )
    print(
        f"{args.checkpoint}: {found.model_name} on {found.data_name} test ({found.test_set}): "
        f"top-1 {res['top1']:.2f}  top-5 {res['top5']:.2f}  loss {res['loss']:.4f}  "
        f"precision {res['precision']}"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "checkpoint": args.checkpoint,
                    "model": found.model_name,
                    **res,
                    "test_set": found.test_set,
                }
            )
        )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from ckd.listing import list_lines  # deferred: start-up

    print("\n".join(list_lines(args.what)))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from ckd.bench import plots, viz  # deferred: start-up

    out = Path(args.out)
    if args.kind == "curves":
        plots.plot_curves([Path(p) for p in args.runs], out)
        print(f"wrote {out}")
    elif args.kind == "bars":
        print(plots.bars_command([Path(p) for p in args.runs], out))
    else:
        print(
            viz.plot_command(
                args.kind,
                args.student,
                out,
                teacher=getattr(args, "teacher", None),
                model=args.model,
                teacher_model=getattr(args, "teacher_model", None),
                data=args.data,
                data_root=args.data_root,
                subset=args.subset,
                batch_size=args.batch_size,
                device=args.device,
            )
        )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ckd.bench.suite import main_report  # deferred: start-up

    main_report(list(args.runs), args.out)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ckd.demo import run_demo  # deferred: start-up

    run_demo(Path(args.out), data_root=args.data_root, overrides=list(args.overrides))
    return 0


def _cmd_suite(args: argparse.Namespace) -> int:
    from ckd.bench.suite import run_suite  # deferred: start-up

    run_suite(
        args.suite,
        list(args.overrides),
        jobs=getattr(args, "jobs", 1),
        threads=getattr(args, "threads", None),
        mps=getattr(args, "mps", "auto"),
    )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.what != "speed":  # `ckd bench SUITE.yaml`: the earlier name of `ckd suite`
        print(f"ckd: note: `ckd bench SUITE` is now `ckd suite {args.what}`", file=sys.stderr)
        args.suite = args.what
        return _cmd_suite(args)
    from ckd.bench.speed import speed_command  # deferred: start-up
    from ckd.bench.timing import BenchSpec

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
        reference=args.reference,
    )
    report = speed_command(
        spec, args.variants, not args.no_memory, args.profile, args.json, echo=_say
    )
    print(report)
    return 0


def _cmd_make_shapes(args: argparse.Namespace) -> int:
    from ckd.tasks.detection.shapes import make_shapes  # deferred: start-up

    for key in ("train", "val", "size", "max_shapes"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1; got {getattr(args, key)}")
    root = make_shapes(args.out, args.train, args.val, args.size, args.max_shapes, args.seed)
    print(f"wrote {root}: {args.train} train / {args.val} val images ({args.size}x{args.size})")
    return 0


def _cmd_make_folder(args: argparse.Namespace) -> int:
    from ckd.data.make_folder import make_fashion_mnist_folder  # deferred: start-up

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
    from ckd.models.pretrained import WeightsLocation  # deferred: start-up

    for name in args.models:
        print(f"{name}: {WeightsLocation(name).fetch()}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ckd.export import ExportCheckError, export  # deferred: start-up

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


def _cmd_cache(args: argparse.Namespace) -> int:
    if args.action == "info":
        from ckd.engine.cache import describe  # deferred: start-up

        print(describe(args.config))
        return 0
    from ckd.api import run_cache_build  # deferred: start-up

    line = run_cache_build(
        args.config, args.overrides, args.out, args.features, args.force, echo=_say
    )
    print(line)
    return 0


#: The top-level help's description (plain text: help texts carry no markup).
DESCRIPTION = (
    "ckd: Contrastive Knowledge Distillation (CKD, Zhu et al., IEEE TIP 2025) and its "
    "baselines. Train teachers, distill students, evaluate, plot and export them."
)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (it imports nothing heavy: ``ckd --help`` and every command's
    ``--help`` answer without loading torch)."""
    from ckd.listing import SECTIONS  # deferred: start-up
    from ckd.version import __version__  # deferred: only the parser shows it

    p = argparse.ArgumentParser(prog="ckd", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"ckd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a teacher (method vanilla) or distill a student")
    t.add_argument("config", help="a YAML file, a shipped config name, or a run folder")
    t.add_argument("overrides", nargs="*", help="key.path=value, e.g. optim.lr=0.1")
    t.add_argument("--resume", action="store_true", help="continue the run in run.out_dir")
    t.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help="stop after N epochs (iterations, for an iteration schedule); continue later "
        "with --resume",
    )
    t.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    t.add_argument(
        "--print-config",
        action="store_true",
        help="a dry run: check the config and print it resolved, as YAML (the run's "
        "config.yaml), with a note on a missing file (data, teacher); write nothing",
    )
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser(
        "eval", help="top-1/top-5 of a checkpoint on its run's test set (or the whole split)"
    )
    e.add_argument("checkpoint", help="a checkpoint file, or a run folder (its last.pt)")
    e.add_argument("--model", help="model name (default: from the checkpoint's config)")
    e.add_argument("--data", help="dataset name (default: from the checkpoint's config)")
    e.add_argument("--data-root", default=None)
    e.add_argument("--batch-size", type=int, default=256)
    which = e.add_mutually_exclusive_group()
    which.add_argument(
        "--full-test",
        action="store_true",
        help="the whole test split (default: the run's own test set, its data.test_subset)",
    )
    which.add_argument(
        "--subset", type=int, default=None, help="a class-balanced subset of N test images"
    )
    e.add_argument("--device", default="auto")
    e.add_argument(
        "--amp",
        default=None,
        choices=["auto", "none", "bf16", "fp16"],
        help="precision (default: the run's own run.amp on this machine, as the run evaluated "
        "itself; none for a foreign file)",
    )
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_cmd_eval)

    ls = sub.add_parser("list", help="models, methods, datasets and shipped configs")
    ls.add_argument("what", nargs="?", default="all", choices=SECTIONS)
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

    r = sub.add_parser(
        "report",
        help="results.csv, report.md (paired differences with t intervals) and figures "
        "from finished runs",
    )
    r.add_argument("runs", nargs="+", help="run or suite folders")
    r.add_argument(
        "--out",
        default=None,
        help="folder for results.csv, report.md, differences.csv, bars.png, differences.png "
        "(default: the one folder given; required with several)",
    )
    r.set_defaults(func=_cmd_report)

    d = sub.add_parser("demo", help="offline demo: Fashion-MNIST teacher, then CE / KD / CKD")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--data-root", default=None)
    d.add_argument("overrides", nargs="*", help="key.path=value applied to every run")
    d.set_defaults(func=_cmd_demo)

    s = sub.add_parser("suite", help="a fair multi-seed benchmark suite (SUITE.yaml)")
    s.add_argument("suite", help="a suite YAML file")
    s.add_argument("overrides", nargs="*", help="key.path=value for the suite file")
    s.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="runs at once per GPU (or on the CPU), each its own process; every GPU is used "
        "(default: 1, one run after the other in this process)",
    )
    s.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="T",
        help="torch threads per run (default: torch's with --jobs 1, else the cores split "
        "between the jobs)",
    )
    s.add_argument(
        "--mps",
        choices=["auto", "off"],
        default="auto",
        help="with --jobs > 1 on GPUs: CUDA MPS when the machine has it (auto), or not",
    )
    s.set_defaults(func=_cmd_suite)

    b = sub.add_parser(
        "bench",
        help="speed: the input paths side by side, images/s",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    b.add_argument("what", help="'speed' (a suite file here is the earlier `ckd suite`)")
    b.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    b.add_argument("--teacher", default="resnet56", help="teacher model (random weights)")
    b.add_argument("--student", default="resnet20", help="student model")
    b.add_argument("--batch-size", type=int, default=64, help="images per step")
    b.add_argument("--steps", type=int, default=15, help="timed steps per variant and round")
    b.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    b.add_argument("--rounds", type=int, default=3, help="rounds of all variants in turn")
    b.add_argument("--classes", type=int, default=100, help="10 or 100 (CIFAR's formats)")
    b.add_argument("--workers", type=int, default=2, help="DataLoader workers of path (a)")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    b.add_argument("--threads", type=int, default=None, help="torch threads (None: torch's)")
    b.add_argument(
        "--variants",
        default=None,
        help="PATH:METHOD,... with PATH standard|fast|fast-compiled|fast-graphs|cache|"
        "cache-compiled|cache-graphs|reference and METHOD ckd|kd|dkd|crd|vanilla (None: the "
        "paths on ckd, then fast:kd,cache:kd,fast:vanilla; on CUDA also the -graphs paths on "
        "ckd and kd; with --reference also reference:ckd,reference:kd first)",
    )
    b.add_argument(
        "--reference",
        default=None,
        metavar="PATH",
        help="a checkout of the official CKD code: its own training step is timed beside ours "
        "(its requirements importable: yacs, tensorboardX, scipy)",
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
    mf.add_argument(
        "--force",
        action="store_true",
        help="replace an --out this command wrote, as it wrote it (never a file of yours)",
    )
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
    ex.add_argument(
        "--force",
        action="store_true",
        help="replace an output this command wrote (never the checkpoint, nor a file of yours)",
    )
    ex.set_defaults(func=_cmd_export)

    c = sub.add_parser("cache", help="teacher-output cache: build one, or describe one")
    c.add_argument("action", choices=["build", "info"])
    c.add_argument("config", help="build: a config (as for train); info: a cache folder")
    c.add_argument("overrides", nargs="*", help="key.path=value, as for train")
    c.add_argument("--out", default=None, help="the cache folder (default: run.teacher_cache)")
    c.add_argument("--features", action="store_true", help="also the teacher's features")
    c.add_argument(
        "--force", action="store_true", help="replace a teacher cache ckd made in the folder"
    )
    c.set_defaults(func=_cmd_cache)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line; ``key=value`` overrides may also follow flags
    (``ckd train CFG --resume a=1``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and not any(x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with terminate_as_interrupt():
            code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except USER_ERRORS as e:
        print(f"ckd: error: {one_line(e)}", file=sys.stderr)
        return 2
    except Diverged as e:
        print(f"ckd: error: {one_line(e)}", file=sys.stderr)
        return EXIT_DIVERGED
    except BrokenPipeError:  # the reader left (`ckd list | head`): stop quietly, as tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # as if killed by SIGPIPE
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        where = f" (writing {e.filename})" if e.filename else ""
        print(f"ckd: error: {DISK_FULL[e.errno]}{where}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"ckd: {one_line(e)}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("ckd: interrupted", file=sys.stderr)  # what is kept: said where it is known
        return 130


if __name__ == "__main__":
    sys.exit(main())
