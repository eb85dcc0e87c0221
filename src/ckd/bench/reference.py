"""The official CKD code's own training step as a timed variant of ``ckd bench speed
--reference PATH``: a checkout of github.com/ZhouXinzzzzz/CKD (its ``mdistiller`` package, not
shipped here), imported from PATH and run as it runs."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ckd.bench.timing import BenchSpec
from ckd.engine.runtime import pick_device
from ckd.errors import ConfigError

#: The official code's distiller of each method (mdistiller's names); with --reference.
REFERENCE_METHODS = {"ckd": "CKD", "kd": "KD"}


def _import_reference(path: str) -> dict[str, Any]:
    """The pieces of the official CKD code (a checkout at ``path``, its ``mdistiller``
    package) that its CIFAR training step is made of."""
    root = Path(path)
    if not (root / "mdistiller" / "__init__.py").is_file():
        raise ConfigError(
            f"--reference: {path} is not a checkout of the official CKD code (no "
            "mdistiller/__init__.py in it)"
        )
    sys.path.insert(0, str(root.resolve()))
    try:
        from mdistiller.dataset.cifar100 import CIFAR100Instance, get_cifar100_train_transform
        from mdistiller.distillers import distiller_dict
        from mdistiller.engine.cfg import CFG
        from mdistiller.engine.trainer import BaseTrainer
        from mdistiller.models import cifar_model_dict
    except ImportError as e:
        raise ConfigError(
            f"--reference: the official code at {path} does not import ({e}); install its "
            "requirements (yacs, tensorboardX, scipy) where this Python finds them, e.g. "
            "pip install --target DIR yacs tensorboardX and PYTHONPATH=DIR"
        ) from None
    return {
        "dataset": CIFAR100Instance,
        "transform": get_cifar100_train_transform,
        "distillers": distiller_dict,
        "cfg": CFG,
        "trainer": BaseTrainer,
        "models": cifar_model_dict,
    }


@contextlib.contextmanager
def _cuda_calls_stay_on_cpu(device: torch.device) -> Iterator[None]:
    """The official step moves its batch with ``.cuda()``; on the CPU that is a no-op here."""
    if device.type == "cuda":
        yield
        return
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]  # undone below
    try:
        yield
    finally:
        torch.Tensor.cuda = saved  # type: ignore[method-assign]  # torch's own again


class ReferenceSteps:
    """The official CKD code's own training step as a timed variant: its CIFAR models (the
    teacher loaded from the same checkpoint), its distiller (``CKD`` or ``KD``, its default
    weights), its SGD and ``BaseTrainer.train_iter`` (forward, summed loss, backward, step, its
    loss and accuracy meters), fed by its CIFAR-100 pipeline (``CIFAR100Instance``, its
    RandomCrop + flip + Normalize transform, a shuffled DataLoader of ``num_workers``), in
    full precision and the contiguous layout, as it runs. Wrapped in ``DataParallel`` as its
    ``tools/train.py`` does (a pass-through on one device)."""

    def __init__(self, spec: BenchSpec, method: str, data: Path, teacher: Path) -> None:
        from torch.utils.data import DataLoader

        ref = _import_reference(spec.reference or "")
        self.device = pick_device(spec.device)
        models = ref["models"]
        for name in (spec.teacher, spec.student):
            if name not in models:
                raise ConfigError(f"--reference: the official code has no CIFAR model {name!r}")
        cfg = ref["cfg"].clone()
        cfg.DISTILLER.TYPE = REFERENCE_METHODS[method]
        cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.LR = spec.batch_size, 0.05
        torch.manual_seed(0)
        teacher_net = models[spec.teacher][0](num_classes=spec.num_classes)
        teacher_net.load_state_dict(torch.load(teacher, weights_only=True)["model"])
        student = models[spec.student][0](num_classes=spec.num_classes)
        distiller = ref["distillers"][cfg.DISTILLER.TYPE](student, teacher_net, cfg)
        if self.device.type == "cuda":
            distiller = distiller.cuda()
        self.distiller = torch.nn.DataParallel(distiller)
        self.trainer = ref["trainer"].__new__(ref["trainer"])  # no log folders, no writer
        self.trainer.cfg, self.trainer.distiller = cfg, self.distiller
        self.trainer.optimizer, _ = ref["trainer"].init_optimizer(self.trainer, cfg)

        base = ref["dataset"]

        # the generated files have no published md5 to check
        class Generated(base):  # type: ignore[misc, valid-type]  # mdistiller's, found at run time
            train_list = [[name, None] for name, _ in base.train_list]
            test_list = [[name, None] for name, _ in base.test_list]
            meta = {**base.meta, "md5": None}

        train = Generated(root=str(data), train=True, transform=ref["transform"]())
        self.loader: DataLoader[Any] = DataLoader(
            train, batch_size=spec.batch_size, shuffle=True, num_workers=spec.num_workers
        )
        self.steps_per_epoch = len(self.loader)
        self.meters: dict[str, Any] = {}

    def batches(self, epoch: int) -> Iterator[Any]:
        from mdistiller.engine.utils import AverageMeter

        self.distiller.train()
        self.meters = {
            k: AverageMeter() for k in ("training_time", "data_time", "losses", "top1", "top5")
        }
        return iter(self.loader)

    def step(self, batch: Any, epoch: int, i: int) -> None:
        with _cuda_calls_stay_on_cpu(self.device):
            type(self.trainer).train_iter(self.trainer, batch, epoch + 1, self.meters)
