"""Figures from run folders (their ``metrics.jsonl``), written as PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ckd.bench.report import aggregate, find_runs
from ckd.engine.metrics import read_metrics
from ckd.errors import ConfigError
from ckd.safe_yaml import load_yaml

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn
    from matplotlib.figure import Figure


def plot_curves(runs: list[Path], out: Path, labels: list[str] | None = None) -> Path:
    """Write :func:`curves_figure` of ``runs`` to ``out`` (PNG)."""
    return save_figure(curves_figure(runs, labels), out)  # selects matplotlib's file-only backend


def curves_figure(runs: list[Path], labels: list[str] | None = None) -> Figure:
    """Test top-1 and every training loss term per epoch: one colour per run, the same in both
    panels, and a line style per term. The terms are plotted as they enter the loss (weighted),
    and labelled so: ``ckd x 10`` (its ``w_ckd`` from the run's ``config.yaml``), or
    ``dkd (weighted)`` for a term with no single weight. Runs of few rows get markers, so a
    one-epoch run shows as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or [r.parent.name if r.name.startswith("seed") else r.name for r in runs]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        rows = read_metrics(run)
        if not rows:
            continue
        style = {"color": colours[i % len(colours)], "marker": "o" if len(rows) <= 30 else None}
        tested = [r for r in rows if "test_top1" in r]
        acc_ax.plot([r["epoch"] for r in tested], [r["test_top1"] for r in tested], **style)
        acc_ax.plot([], [], label=label, **style)  # one legend entry per run
        weights = term_weights(run)
        terms = [k for k in dict.fromkeys(k for r in rows for k in r) if _is_loss(k)]
        for j, term in enumerate(terms):
            points = [(r["epoch"], r[term]) for r in rows if term in r]
            loss_ax.plot(
                *zip(*points, strict=True),
                linestyle=LINE_STYLES[j % len(LINE_STYLES)],
                label=f"{label}: {weighted(term[6:], weights)}",
                **style,
            )
    acc_ax.set(xlabel="epoch", ylabel="test top-1 (%)", title="test accuracy")
    loss_ax.set(
        xlabel="epoch",
        ylabel="weighted loss",
        title="training loss terms, as weighted in the loss",
        yscale="log",
    )
    acc_ax.grid(alpha=0.3)
    loss_ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=8)
    loss_ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


_NOT_LOSSES = {"train_top1", "train_time_s", "train_loss"}


def save_figure(fig: Figure, out: Path) -> Path:
    """Write ``fig`` to ``out`` (PNG) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


LINE_STYLES = ("-", "--", ":", "-.")


def _is_loss(key: str) -> bool:
    return key.startswith("train_") and key not in _NOT_LOSSES


def term_weights(run: Path) -> dict[str, float]:
    """``{term: weight}`` of a run's method(s), from its ``config.yaml``: each ``w_<term>``
    option, taken from the first method that has it (as the loss takes the term)."""
    path = run / "config.yaml"
    if not path.is_file():
        return {}
    method = (load_yaml(path.read_text(), str(path)) or {}).get("method") or {}
    weights: dict[str, float] = {}
    for part in [method, *(method.get("also") or [])]:
        for key, value in part.items():
            if key.startswith("w_") and isinstance(value, int | float):
                weights.setdefault(key[2:], float(value))
    return weights


def weighted(term: str, weights: dict[str, float]) -> str:
    """A loss term's label: ``ckd x 10`` with its weight, else ``dkd (weighted)``."""
    return f"{term} x {weights[term]:g}" if term in weights else f"{term} (weighted)"


def plot_bars(rows: list[dict], out: Path, title: str = "") -> Path:
    """Mean ± std of the last-epoch top-1 per config (``ckd.bench.report.aggregate``), one bar
    each, the seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = aggregate(rows)
    names = [
        g.label if len({x.student for x in groups}) == 1 else f"{g.label}\n{g.student}"
        for g in groups
    ]
    means = [g.mean for g in groups]
    stds = [0.0 if len(g.values) < 2 else g.std for g in groups]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(groups)), 4))
    ax.bar(range(len(groups)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
    for i, g in enumerate(groups):
        ax.scatter([i] * len(g.values), g.values, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(groups)), names, rotation=30, ha="right")
    low = min(min(g.values) for g in groups)
    high = max(max(g.values) for g in groups)
    pad = max(1.0, 0.15 * (high - low))
    ax.set_ylim(low - pad, high + pad)
    ax.set(ylabel="last-epoch test top-1 (%)", title=title or "mean ± std over seeds")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out)


def plot_differences(found: list, out: Path, title: str = "") -> Path:
    """One line per paired comparison (``ckd.bench.report.Comparison``): the mean difference
    and its interval, a dashed line at 0; intervals that exclude 0 in colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = {c.group.student for c in found}
    names = [
        f"{c.group.label} - {c.reference.label}"
        + ("" if len(students) == 1 else f" ({c.group.student})")
        for c in found
    ]
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.32 * len(found)))
    for i, c in enumerate(found):
        d = c.diff
        y = len(found) - 1 - i
        color = "tab:green" if d.shown and d.lo > 0 else "tab:red" if d.shown else "tab:gray"
        if d.n >= 2:
            ax.plot([d.lo, d.hi], [y, y], color=color, lw=2)
        ax.plot([d.mean], [y], "o", color=color, ms=5)
    ax.axvline(0.0, color="black", ls="--", lw=1)
    ax.set_yticks(range(len(found)), names[::-1], fontsize=8)
    conf = found[0].diff.confidence if found else 0.95
    ax.set(
        xlabel=f"difference of last-epoch top-1 (points), paired by seed, {conf:.0%} t interval",
        title=title or "paired differences",
    )
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, out)


def bars_command(runs: list[Path], out: Path) -> str:
    """``ckd plot bars``: the bar chart of the finished runs under ``runs``."""
    rows = [r for r in find_runs(runs) if r["label"] != "teacher"]
    if not rows:
        raise ConfigError(f"no finished runs under {', '.join(map(str, runs))}")
    plot_bars(rows, out)
    return f"wrote {out}"
