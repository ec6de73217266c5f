"""The report's figures (matplotlib, PNG and PDF), byte-identical for identical results.

Conventions a reviewer can rely on:

- one colour and one marker per protocol, fixed (each protocol's ``style``; one without
  gets a colour and marker from a hash of its name), so adding a protocol never
  recolours the others, and line style is never spent on anything else;
- a curve is one group (runs identical but for the seed): the mean over seeds with a
  band of ± 1 standard deviation, which the figure says, with n;
- panels are one data set × model (rows) × worker count (columns), named in the panel
  title, so a model family that trains 20× faster gets its own axes; panels of a row
  share the x range;
- PDFs embed TrueType (Type 42) fonts, not Type 3 (rejected by IEEE and ACM checks).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter

import protocols
from suite.report.analysis import settings

_SPARE_COLOURS = ["#949494", "#fbafe4", "#ece133", "#8c564b", "#17becf", "#7f7f7f", "#bcbd22"]
_SPARE_MARKERS = ["h", "p", "<", ">", "d", "8", "H"]
#: Applied when saving: TrueType (Type 42) fonts in PDF and PS.
RC: dict[str, Any] = {"pdf.fonttype": 42, "ps.fonttype": 42}


def style(protocol: str) -> tuple[str, str]:
    """The fixed colour and marker of ``protocol``: its own (``Protocol.style`` set on its
    class; the shipped ones use the Okabe-Ito / "colorblind" palette), else one derived
    from a hash of its name (a plugin without a style, a subclass that did not set its
    own, so it is never drawn as its parent, or results of a protocol not installed)."""
    cls = protocols.load_all().get(protocol)
    own = cls.__dict__.get("style") if cls is not None else None
    if own is not None:
        return own
    h = int(hashlib.sha256(protocol.encode()).hexdigest(), 16)
    return _SPARE_COLOURS[h % len(_SPARE_COLOURS)], _SPARE_MARKERS[(h // 7) % len(_SPARE_MARKERS)]


def save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    """PNG and PDF without timestamps, so re-running the report changes nothing."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    with plt.rc_context(RC):  # type: ignore[arg-type]
        fig.savefig(paths[0], dpi=150, bbox_inches="tight", metadata={"Software": None})
        fig.savefig(
            paths[1], bbox_inches="tight", metadata={"CreationDate": None, "Producer": None}
        )
    plt.close(fig)
    return paths


def labels(
    runs: pd.DataFrame, panel_keys: tuple[str, ...] = ("data", "model", "workers")
) -> pd.Series:
    """Legend label of each group: its protocol (with the knobs that differ between groups
    of that protocol) and any other setting that differs, panels' own keys aside."""
    firsts = runs.drop_duplicates("group").set_index("group")
    shown, _ = settings(firsts)
    extra = [c for c in shown.columns if c not in (*panel_keys, "protocol")]
    text = shown["protocol"].astype(str)
    for c in extra:
        text = text + ", " + c + "=" + shown[c].astype(str)
    return text


def band(metrics: pd.DataFrame, x: str, y: str, points: int = 60) -> pd.DataFrame:
    """Per group: mean and std of ``y`` over its runs on a common ``x`` grid (from the
    latest first point to the earliest last one, where every seed has data)."""
    rows = []
    for gid, group in metrics.groupby("group", sort=True):
        curves = [g.sort_values(x) for _, g in group.groupby("run") if len(g) > 0]
        start = max(float(c[x].min()) for c in curves)
        end = min(float(c[x].max()) for c in curves)
        grid = np.linspace(start, max(start, end), points)
        values = np.stack(
            [np.interp(grid, c[x].to_numpy(float), c[y].to_numpy(float)) for c in curves]
        )
        mean = values.mean(axis=0)
        std = values.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(grid)
        first = group.iloc[0]
        for g, m, s in zip(grid, mean, std, strict=True):
            rows.append(
                {
                    "group": gid,
                    "data": first["data"],
                    "model": first["model"],
                    "workers": first["workers"],
                    "protocol": first["protocol"],
                    x: g,
                    "mean": m,
                    "std": s,
                    "n": len(curves),
                }
            )
    return pd.DataFrame(rows)


def _panels(frame: pd.DataFrame) -> tuple[list[tuple[str, str]], list[int]]:
    rows = sorted({(str(d), str(m)) for d, m in zip(frame.data, frame.model, strict=True)})
    return rows, sorted({int(w) for w in frame.workers})


def _seeds_note(ns: pd.Series) -> str:
    lo, hi = int(ns.min()), int(ns.max())
    n = f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"
    return f"Lines: mean over seeds; bands: ± 1 standard deviation ({n} seeds per curve)."


def _legend(fig: plt.Figure, entries: dict[str, Any], note: str) -> None:
    fig.legend(
        list(entries.values()),
        list(entries.keys()),
        loc="upper center",
        ncol=min(4, len(entries)),
        bbox_to_anchor=(0.5, 0.0),
        frameon=False,
        fontsize=8,
    )
    fig.text(0.5, -0.01 - 0.045 * (1 + (len(entries) - 1) // 4), note, ha="center", fontsize=7)


def curves(
    metrics: pd.DataFrame, x: str, xlabel: str, out: Path, name: str, logx: bool = False
) -> list[Path]:
    """Test accuracy against ``x``: a panel per data set × model (row) × workers (column),
    one curve per group (mean ± 1 std over seeds)."""
    done = metrics.dropna(subset=["test_acc", x])
    if done.empty:
        return []
    b = band(done, x, "test_acc")
    names = labels(done)
    rows, workers = _panels(b)
    fig, axes = plt.subplots(
        len(rows),
        len(workers),
        figsize=(3.6 * len(workers), 2.9 * len(rows)),
        squeeze=False,
        sharex="row",
        sharey="row",
    )
    entries: dict[str, Any] = {}
    for i, (data, model) in enumerate(rows):
        for j, w in enumerate(workers):
            ax = axes[i][j]
            sub = b[(b.data == data) & (b.model == model) & (b.workers == w)]
            for gid, g in sub.groupby("group", sort=True):
                colour, marker = style(str(g.protocol.iloc[0]))
                label = names[gid]
                (line,) = ax.plot(
                    g[x], 100 * g["mean"], color=colour, marker=marker, markevery=12, ms=4, lw=1.4
                )
                ax.fill_between(
                    g[x],
                    100 * (g["mean"] - g["std"]),
                    100 * (g["mean"] + g["std"]),
                    color=colour,
                    alpha=0.2,
                    linewidth=0,
                )
                entries.setdefault(label, line)
            ax.set_title(f"{data}, {model}\n{w} workers")
            if sub.empty:
                ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes)
            if logx:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # no overlapping minor labels
            ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3, lw=0.5)
    fig.tight_layout()
    _legend(fig, dict(sorted(entries.items())), _seeds_note(b.n))
    return save(fig, out, name)


def round_breakdown(
    runs: pd.DataFrame, out: Path, name: str = "round_time_breakdown"
) -> list[Path]:
    """Time per optimizer step (ℓ differs between protocols, so per round would mislead),
    split into compute and communication, grouped by worker count, ± 1 std over seeds."""
    done = runs[(runs.status == "completed") & (runs.steps > 0)].copy()
    if done.empty:
        return []
    done["compute"] = done.compute_s / done.steps * 1e3
    done["communication"] = done.comm_s / done.steps * 1e3
    done["total"] = done.compute + done.communication
    names = labels(done)
    done["label"] = done.group.map(names)
    rows = sorted({(str(d), str(m)) for d, m in zip(done.data, done.model, strict=True)})
    fig, axes = plt.subplots(len(rows), 1, figsize=(7.5, 2.8 * len(rows)), squeeze=False)
    entries: dict[str, Any] = {}
    for ax, (data, model) in zip(axes[:, 0], rows, strict=True):
        sub = done[(done.data == data) & (done.model == model)]
        stats = sub.groupby(["workers", "label", "protocol"], sort=True)[
            ["compute", "communication", "total"]
        ].agg(["mean", "std"])
        workers = sorted(sub.workers.unique())
        series = sorted(sub.label.unique())
        width = 0.8 / len(series)
        for k, label in enumerate(series):
            protocol = str(sub[sub.label == label].protocol.iloc[0])
            colour, _ = style(protocol)
            for xi, w in enumerate(workers):
                key = (w, label, protocol)
                if key not in stats.index:
                    continue
                s = stats.loc[key]
                pos = xi - 0.4 + width * (k + 0.5)
                ax.bar(pos, s[("compute", "mean")], width, color=colour, edgecolor="black", lw=0.4)
                ax.bar(
                    pos,
                    s[("communication", "mean")],
                    width,
                    bottom=s[("compute", "mean")],
                    color=colour,
                    alpha=0.45,
                    hatch="///",
                    edgecolor="black",
                    lw=0.4,
                )
                err = s[("total", "std")]
                ax.errorbar(
                    pos,
                    s[("total", "mean")],
                    yerr=0.0 if pd.isna(err) else err,
                    color="black",
                    capsize=2,
                    lw=0.8,
                )
            entries.setdefault(label, Patch(facecolor=colour, edgecolor="black", lw=0.4))
        ax.set_xticks(range(len(workers)), [f"{w} workers" for w in workers])
        ax.set_ylabel("time per step (ms)")
        ax.set_title(f"{data}, {model}")
        ax.grid(axis="y", alpha=0.3, lw=0.5)
    entries = dict(sorted(entries.items()))
    entries["compute (solid)"] = Patch(facecolor="white", edgecolor="black", lw=0.4)
    entries["communication (hatched)"] = Patch(facecolor="white", edgecolor="black", hatch="///")
    fig.tight_layout()
    _legend(
        fig,
        entries,
        "Per optimizer step: training clock ÷ steps, compute and communication means over "
        "ranks; bars: mean over seeds, error bars: ± 1 standard deviation of the total.",
    )
    return save(fig, out, name)


def scaling(runs: pd.DataFrame, out: Path, name: str = "scaling") -> list[Path]:
    """Training time and final accuracy against workers, per data set × model (rows)."""
    done = runs[runs.status == "completed"].copy()
    if done.empty:
        return []
    done["acc"] = 100 * done.final_test_acc
    names = labels(done)
    done["label"] = done.group.map(names)
    rows = sorted({(str(d), str(m)) for d, m in zip(done.data, done.model, strict=True)})
    fig, axes = plt.subplots(len(rows), 2, figsize=(8, 2.8 * len(rows)), squeeze=False)
    entries: dict[str, Any] = {}
    for i, (data, model) in enumerate(rows):
        sub = done[(done.data == data) & (done.model == model)]
        for ax, column, ylabel in (
            (axes[i][0], "train_s", "training time (s)"),
            (axes[i][1], "acc", "final test accuracy (%)"),
        ):
            for label, g in sub.groupby("label", sort=True):
                colour, marker = style(str(g.protocol.iloc[0]))
                m = g.groupby("workers")[column].agg(["mean", "std"]).reset_index()
                line = ax.errorbar(
                    m.workers,
                    m["mean"],
                    yerr=m["std"].fillna(0.0),
                    color=colour,
                    marker=marker,
                    ms=4,
                    capsize=2,
                    lw=1.2,
                )
                entries.setdefault(label, Line2D([], [], color=colour, marker=marker, ms=4))
                del line
            ax.set_xticks(sorted(sub.workers.unique()))
            ax.set_xlabel("workers")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{data}, {model}")
            ax.grid(alpha=0.3, lw=0.5)
    fig.tight_layout()
    ns = done.groupby("group").size()
    _legend(fig, dict(sorted(entries.items())), _seeds_note(ns).replace("bands", "error bars"))
    return save(fig, out, name)
