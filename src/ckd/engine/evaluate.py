"""Top-1 / top-5 accuracy and loss of a classifier on a data loader."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Accuracy in percent and mean cross-entropy over every sample of ``loader``.

    ``loader`` yields ``(images [B, C, H, W], targets [B], ...)``. The model is put in eval mode
    and back in its previous mode afterwards. Returns ``{"top1", "top5", "loss", "n"}``
    (top-5 is top-min(5, classes)). ``reduce`` sums the counts over the processes of a
    distributed run, each of which evaluated its own share of the samples.
    """
    was_training = model.training
    model.eval()
    correct1 = correct5 = loss_sum = 0.0
    n = 0
    for batch in loader:
        images = batch[0].to(device, non_blocking=True)
        targets = batch[1].to(device, non_blocking=True)
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == targets[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        n += targets.numel()
    model.train(was_training)
    if reduce is not None:
        counts = torch.tensor([correct1, correct5, loss_sum, n], dtype=torch.float64, device=device)
        correct1, correct5, loss_sum, n = reduce(counts).tolist()
        n = int(n)
    if n == 0:
        raise ValueError("evaluation set is empty")
    return {
        "top1": 100.0 * correct1 / n,
        "top5": 100.0 * correct5 / n,
        "loss": loss_sum / n,
        "n": n,
    }
