"""A whole CKD training on one page: data, a teacher, a student, the CKD loss, the loop, top-1.

It uses the package's pieces directly (``ckd.data`` for Fashion-MNIST, ``ckd.models`` for the
CIFAR zoo, ``ckd.losses.ckd_loss``) and none of its Trainer, so every step is in sight:

1. a class-balanced subset of Fashion-MNIST (the offline Debian copy in
   /usr/share/datasets/fashion-mnist, or ``--data-root DIR`` holding the four IDX files);
2. a teacher trained briefly with cross-entropy (no pretrained weights exist offline);
3. a student trained with cross-entropy only, the baseline (``--no-baseline`` skips it);
4. the same student, from the same initial weights on the same batches, trained with
   ``CE + w_ckd * ckd_loss(student_logits, teacher_logits, temperature)``;
5. the top-1 accuracy of each on a class-balanced test subset.

    python examples/ckd_minimal.py              # ~2 CPU-minutes: a minute or two on 2 cores
    python examples/ckd_minimal.py --epochs 15 --train-subset 10000 --test-subset 10000

It is seeded (``--seed``): two runs on one machine (same thread count) print the same figures;
another CPU may print slightly different ones (floating-point kernels differ between CPUs).
With the small defaults one seed says little about CKD against CE: the point is how the
pieces fit.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ckd.data import build_dataset, subset
from ckd.errors import USER_ERRORS
from ckd.losses import ckd_loss
from ckd.models import create_model

NUM_CLASSES, IN_CHANNELS = 10, 1  # Fashion-MNIST: 10 classes, grey images padded to 32x32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None, help="folder of the Fashion-MNIST IDX files")
    p.add_argument("--train-subset", type=int, default=4000, help="training images (balanced)")
    p.add_argument("--test-subset", type=int, default=2000, help="test images (balanced)")
    p.add_argument("--teacher", default="resnet14", help="a ckd.models name")
    p.add_argument("--student", default="resnet8", help="a ckd.models name")
    p.add_argument("--teacher-epochs", type=int, default=5)
    p.add_argument("--epochs", type=int, default=4, help="epochs of each student")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (SGD)")
    p.add_argument("--w-ckd", type=float, default=10.0, help="weight of the CKD term")
    p.add_argument("--temperature", type=float, default=1.0, help="CKD's tau")
    p.add_argument("--no-baseline", action="store_true", help="skip the CE-only student")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("train_subset", "test_subset", "teacher_epochs", "epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.batch_size < 2:  # a contrastive loss needs other samples in the batch
        p.error(f"--batch-size must be >= 2; got {args.batch_size}")
    return args


def fashion_mnist(args: argparse.Namespace) -> tuple[Dataset, DataLoader]:
    """The training subset (items: augmented image [1, 32, 32], label) and a test loader."""
    train = build_dataset("fashion_mnist", args.data_root, train=True, augment=True)
    test = build_dataset("fashion_mnist", args.data_root, train=False, augment=False)
    train = subset(train, args.train_subset, seed=args.seed)  # the same images for each seed
    test = subset(test, args.test_subset, seed=args.seed)
    return train, DataLoader(test, batch_size=500)


def train_loader(train: Dataset, args: argparse.Namespace) -> DataLoader:
    """Shuffled batches in an order fixed by the seed; the last short batch is dropped so every
    CKD batch holds ``batch_size`` samples (each one's negatives are the others)."""
    order = torch.Generator().manual_seed(args.seed)
    return DataLoader(train, args.batch_size, shuffle=True, drop_last=True, generator=order)


def fit(
    model: nn.Module,
    loader: DataLoader,
    epochs: int,
    lr: float,
    teacher: nn.Module | None = None,
    w_ckd: float = 10.0,
    temperature: float = 1.0,
) -> None:
    """SGD (momentum 0.9, weight decay 5e-4); the learning rate, set every step, rises linearly
    to ``lr`` over the first tenth of the steps, then falls to 0 along a cosine. Loss:
    cross-entropy, plus ``w_ckd * ckd_loss`` against the frozen ``teacher`` if given."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = epochs * len(loader)
    warm = max(1, steps // 10)

    def factor(step: int) -> float:  # the multiple of lr at optimisation step ``step``
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    schedule = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    for _ in range(epochs):
        model.train()
        for images, labels in loader:  # images [B, 1, 32, 32], labels [B]
            logits = model(images)  # [B, 10]
            loss = F.cross_entropy(logits, labels)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(images)  # [B, 10], no gradient into the teacher
                loss = loss + w_ckd * ckd_loss(logits, teacher_logits, temperature=temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()


@torch.no_grad()
def top1(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += (model(images).argmax(dim=1) == labels).sum().item()
        total += labels.numel()
    return 100.0 * correct / total


def train_and_test(
    label: str,
    arch: str,
    epochs: int,
    args: argparse.Namespace,
    train: Dataset,
    test: DataLoader,
    teacher: nn.Module | None = None,
) -> nn.Module:
    """Seed, build ``arch``, train it, print its top-1 and return the model. Seeding here gives
    the CE and CKD students the same initial weights, batch order and augmentation."""
    torch.manual_seed(args.seed)
    model = create_model(arch, num_classes=NUM_CLASSES, in_channels=IN_CHANNELS)
    start = time.perf_counter()
    fit(model, train_loader(train, args), epochs, args.lr, teacher, args.w_ckd, args.temperature)
    took = time.perf_counter() - start
    print(f"{label:<8} {arch:<10} top-1 {top1(model, test):6.2f}%  ({epochs} epochs, {took:.0f} s)")
    return model


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.use_deterministic_algorithms(True)
    try:  # bad input (no data there, an unknown model name) as one line, before any training
        train, test = fashion_mnist(args)
        for arch in (args.teacher, args.student):
            create_model(arch, num_classes=NUM_CLASSES, in_channels=IN_CHANNELS)
    except USER_ERRORS as e:
        sys.exit(f"ckd_minimal.py: error: {e}")
    print(f"Fashion-MNIST: {len(train)} training and {len(test.dataset)} test images")
    teacher = train_and_test("teacher", args.teacher, args.teacher_epochs, args, train, test)
    teacher.eval().requires_grad_(False)  # frozen: eval-mode batch norm, no gradients
    if not args.no_baseline:
        train_and_test("CE", args.student, args.epochs, args, train, test)
    train_and_test("CKD", args.student, args.epochs, args, train, test, teacher=teacher)


if __name__ == "__main__":
    main()
