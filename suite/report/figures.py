"""The report's figures (seaborn, PNG and PDF), byte-identical for identical results.

Seeds of a setting are evaluated at different wall-clock times, so curves are first
interpolated onto a common grid (up to the shortest run), then drawn as the mean with a
band of ± one standard deviation over seeds (n shown in the legend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

PROTOCOL_ORDER = ["single", "ddp", "localsgd", "resist", "ist", "auxnet"]


def _palette(protocols: list[str]) -> dict[str, tuple[float, float, float]]:
    ordered = sorted(protocols, key=lambda p: ([*PROTOCOL_ORDER, p]).index(p))
    return dict(zip(ordered, sns.color_palette("colorblind", len(ordered)), strict=True))


def save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    """PNG and PDF without timestamps, so re-running the report changes nothing."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None, "Producer": None})
    plt.close(fig)
    return paths


def band(metrics: pd.DataFrame, x: str, y: str, points: int = 60) -> pd.DataFrame:
    """Per (data, workers, protocol): mean and std of ``y`` over runs on a common ``x`` grid."""
    rows = []
    keys = ["data", "workers", "protocol", "model"]
    for (data, workers, protocol, model), group in metrics.groupby(keys):
        curves = [g.sort_values(x) for _, g in group.groupby("run") if len(g) > 0]
        # Where every seed has data: from the latest first point to the earliest last one.
        start = max(float(c[x].min()) for c in curves)
        end = min(float(c[x].max()) for c in curves)
        grid = np.linspace(start, max(start, end), points)
        values = np.stack(
            [np.interp(grid, c[x].to_numpy(float), c[y].to_numpy(float)) for c in curves]
        )
        mean = values.mean(axis=0)
        std = values.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(grid)
        for g, m, s in zip(grid, mean, std, strict=True):
            rows.append(
                {
                    "data": data,
                    "workers": workers,
                    "protocol": protocol,
                    "model": model,
                    x: g,
                    "mean": m,
                    "std": s,
                    "n": len(curves),
                }
            )
    return pd.DataFrame(rows)


def curves(
    metrics: pd.DataFrame, x: str, xlabel: str, out: Path, name: str, logx: bool = False
) -> list[Path]:
    """Test accuracy against ``x``: one panel per data set × worker count, bands over seeds."""
    done = metrics.dropna(subset=["test_acc", x])
    if done.empty:
        return []
    b = band(done, x, "test_acc")
    palette = _palette(sorted(b.protocol.unique()))
    panels = b[["data", "workers"]].drop_duplicates().sort_values(["data", "workers"])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (_, panel) in zip(axes[0], panels.iterrows(), strict=True):
        sub = b[(b.data == panel.data) & (b.workers == panel.workers)]
        several = sub.model.nunique() > 1  # then name the model and vary the line style
        styles = {
            m: s
            for m, s in zip(sorted(sub.model.unique()), ["-", "--", ":", "-."] * 4, strict=False)
        }
        for (protocol, model), g in sub.groupby(["protocol", "model"]):
            color = palette[protocol]
            label = f"{protocol} on {model}" if several else protocol
            ax.plot(
                g[x],
                100 * g["mean"],
                color=color,
                linestyle=styles[model],
                label=f"{label} (n={g.n.iloc[0]})",
            )
            ax.fill_between(
                g[x],
                100 * (g["mean"] - g["std"]),
                100 * (g["mean"] + g["std"]),
                color=color,
                alpha=0.2,
                linewidth=0,
            )
        ax.set_title(f"{panel.data}, {panel.workers} workers")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
    # One legend for all panels, below them, so no curve is hidden.
    entries: dict[str, Any] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    fig.tight_layout()
    fig.legend(
        entries.values(),
        entries.keys(),
        loc="upper center",
        fontsize=8,
        ncol=min(3, len(entries)),
        bbox_to_anchor=(0.5, 0.0),
        frameon=False,
    )
    return save(fig, out, name)


def round_breakdown(
    runs: pd.DataFrame, out: Path, name: str = "round_time_breakdown"
) -> list[Path]:
    """Mean time per round split into compute and communication, per protocol and workers."""
    done = runs[(runs.status == "completed") & (runs.rounds > 0)].copy()
    if done.empty:
        return []
    done["compute"] = done.compute_s / done.rounds * 1e3
    done["communication"] = done.comm_s / done.rounds * 1e3
    data_sets = sorted(done.data.unique())
    fig, axes = plt.subplots(1, len(data_sets), figsize=(5.5 * len(data_sets), 3.6), squeeze=False)
    for ax, data in zip(axes[0], data_sets, strict=True):
        m = (
            done[done.data == data]
            .groupby(["workers", "protocol"])[["compute", "communication"]]
            .mean()
        )
        m = m.reset_index()
        steps = done[done.data == data].groupby(["workers", "protocol"]).local_steps.first()
        labels = [
            f"{p}\nℓ={steps[(w, p)]}\n{w} workers"
            for w, p in zip(m.workers, m.protocol, strict=True)
        ]
        ax.bar(labels, m["compute"], label="compute", color=sns.color_palette("colorblind")[0])
        ax.bar(
            labels,
            m["communication"],
            bottom=m["compute"],
            label="communication",
            color=sns.color_palette("colorblind")[1],
        )
        ax.set_ylabel("time per round (ms)")
        ax.set_title(f"{data}: round time (mean over seeds)")
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, out, name)


def scaling(runs: pd.DataFrame, out: Path, name: str = "scaling") -> list[Path]:
    """Training time and final accuracy against the number of workers (mean ± std)."""
    done = runs[runs.status == "completed"].copy()
    if done.empty:
        return []
    done["final acc (%)"] = 100 * done.final_test_acc
    palette = _palette(sorted(done.protocol.unique()))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, column, label in (
        (axes[0], "train_s", "training time (s)"),
        (axes[1], "final acc (%)", "final test accuracy (%)"),
    ):
        sns.lineplot(
            done,
            x="workers",
            y=column,
            hue="protocol",
            style="data" if done.data.nunique() > 1 else None,
            marker="o",
            errorbar="sd",
            palette=palette,
            ax=ax,
        )
        ax.set_xticks(sorted(done.workers.unique()))
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, out, name)
