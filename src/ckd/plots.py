"""Figures from run folders (their ``metrics.jsonl``), written as PNG files."""

from __future__ import annotations

from pathlib import Path

from ckd.engine.metrics import read_metrics


def plot_curves(runs: list[Path], out: Path, labels: list[str] | None = None) -> Path:
    """Test top-1 and every training loss term per epoch, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or [r.parent.name if r.name.startswith("seed") else r.name for r in runs]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for run, label in zip(runs, labels, strict=True):
        rows = read_metrics(run)
        if not rows:
            continue
        epochs = [r["epoch"] for r in rows]
        acc_ax.plot(epochs, [r["test_top1"] for r in rows], label=label)
        for term in [k for k in rows[0] if k.startswith("train_") and k not in _NOT_LOSSES]:
            loss_ax.plot(epochs, [r[term] for r in rows], label=f"{label}: {term[6:]}")
    acc_ax.set(xlabel="epoch", ylabel="test top-1 (%)", title="test accuracy")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training loss terms", yscale="log")
    acc_ax.grid(alpha=0.3)
    loss_ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=8)
    loss_ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


_NOT_LOSSES = {"train_top1", "train_time_s", "train_loss"}
