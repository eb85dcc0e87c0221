"""Figures of what a model learned: class-correlation differences and t-SNE of features.

- :func:`correlation_difference`: as in the DKD and CKD papers, the absolute difference between
  the teacher's and the student's class-correlation matrices of the logits (Pearson correlation
  between the C logit dimensions over the evaluated images). Smaller means the student's logits
  relate the classes the way the teacher's do.
- :func:`plot_tsne`: a 2-D t-SNE (scikit-learn) of the student's pooled embeddings, coloured
  by class.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ckd.bench.plots import save_figure
from ckd.engine.runtime import pick_device
from ckd.models.features import stage_features
from ckd.tasks.classification import checkpoint_model


@torch.no_grad()
def collect_outputs(
    model: nn.Module, loader: Iterable, device: torch.device, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits ``[N, C]``, embeddings ``[N, D]``, targets ``[N]``) of ``model`` in eval mode."""
    model.eval()
    logits, embeds, targets = [], [], []
    n = 0
    for batch in loader:
        x, y = batch[0].to(device), batch[1]
        out, _, emb = stage_features(model, x)
        logits.append(out.float().cpu())
        embeds.append(emb.float().flatten(1).cpu())
        targets.append(torch.as_tensor(y))
        n += len(y)
        if limit is not None and n >= limit:
            break
    cat = [torch.cat(t)[:limit].numpy() for t in (logits, embeds, targets)]
    return cat[0], cat[1], cat[2]


def class_correlation(logits: np.ndarray) -> np.ndarray:
    """``[C, C]`` Pearson correlation between logit dimensions over ``[N, C]`` logits."""
    corr = np.corrcoef(logits.astype(np.float64), rowvar=False)
    return np.nan_to_num(corr)


def correlation_difference(teacher_logits: np.ndarray, student_logits: np.ndarray) -> np.ndarray:
    """``|corr(teacher) - corr(student)|``, ``[C, C]``."""
    return np.abs(class_correlation(teacher_logits) - class_correlation(student_logits))


def plot_correlation_difference(diff: np.ndarray, out: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    im = ax.imshow(diff, cmap="viridis", vmin=0.0, vmax=max(float(diff.max()), 1e-6))
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set(
        xlabel="class",
        ylabel="class",
        title=f"{title}\nmean |diff| = {diff.mean():.4f}, max = {diff.max():.3f}",
    )
    return save_figure(fig, out)


def plot_tsne(
    embeddings: np.ndarray,
    targets: np.ndarray,
    out: Path,
    title: str = "",
    class_names: tuple[str, ...] | None = None,
    seed: int = 0,
) -> Path:
    """2-D t-SNE of ``[N, D]`` embeddings coloured by ``[N]`` targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    xy = TSNE(
        n_components=2, init="pca", perplexity=min(30.0, (len(targets) - 1) / 3), random_state=seed
    ).fit_transform(embeddings.astype(np.float32))
    fig, ax = plt.subplots(figsize=(6, 5.5))
    classes = np.unique(targets)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, c in enumerate(classes):
        pts = xy[targets == c]
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        ax.scatter(
            pts[:, 0],
            pts[:, 1],
            s=4,
            color=cmap(i % cmap.N),
            label=name if len(classes) <= 20 else None,
        )
    if len(classes) <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set(xticks=[], yticks=[], title=title or "t-SNE of student embeddings")
    return save_figure(fig, out)


def plot_command(
    kind: str,
    student: str,
    out: Path,
    teacher: str | None = None,
    model: str | None = None,
    teacher_model: str | None = None,
    data: str | None = None,
    data_root: str | None = None,
    subset: int | None = 2000,
    batch_size: int = 256,
    device: str = "auto",
) -> str:
    """``ckd plot corr|tsne``: the figure of checkpoints' outputs on their test split; returns
    what it says."""
    from torch.utils.data import DataLoader

    dev = pick_device(device, "--device")

    def outputs(path: str, name: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, str]:
        net, model_name, data_name, test, *_ = checkpoint_model(
            path, name, data, data_root, full_test=True
        )
        loader = DataLoader(test, batch_size=batch_size, num_workers=0)
        return (*collect_outputs(net.to(dev), loader, dev, subset), model_name, data_name)

    s_logits, s_embed, targets, s_name, data_name = outputs(student, model)
    if kind == "tsne":
        plot_tsne(s_embed, targets, out, f"t-SNE of {s_name} embeddings ({data_name})")
        return f"wrote {out}"
    assert teacher is not None
    t_logits, _, _, t_name, _ = outputs(teacher, teacher_model)
    diff = correlation_difference(t_logits, s_logits)
    plot_correlation_difference(diff, out, f"{t_name} vs {s_name} ({data_name})")
    return f"mean |corr(teacher) - corr(student)| = {diff.mean():.4f}\nwrote {out}"
