"""The report's figures (matplotlib, PNG and PDF), byte-identical for identical results.

Conventions a reviewer can rely on:

- one colour and one marker per protocol, fixed (each protocol's ``style``; one without
  gets a colour and marker from a hash of its name), so adding a protocol never
  recolours the others; line style (and a bar's hatch) tells apart two settings of one
  protocol (a varied knob), and nothing else;
- a curve is one group (runs identical but for the seed): the mean over seeds with a
  band of ± 1 standard deviation, which the figure says, with n; curves are drawn on a
  common grid between evaluations, so they carry no markers (markers would sit on
  interpolated points); the legend shows each protocol's marker;
- every figure's note says where it was measured (``suite.report.context``);
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


def style_clashes(names: list[str]) -> list[str]:
    """Pairs of ``names`` drawn alike: the same colour, or the same marker (a reader tells
    protocols apart by both). One sentence per pair, naming what to set."""
    out = []
    names = sorted(set(names))
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = [
                f"the {what} {x!r}"
                for what, x, y in zip(("colour", "marker"), style(a), style(b), strict=True)
                if x == y
            ]
            if shared:
                out.append(
                    f"protocols {a} and {b} are drawn with {' and '.join(shared)}: "
                    f"set `style` (colour, marker) on one of their classes"
                )
    return out


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


LINESTYLES = ("-", "--", ":", "-.")
HATCHES = ("", "..", "xx", "oo")


def variants(names: pd.Series, protocol_of: pd.Series) -> dict[str, int]:
    """For each legend label, its index among the labels of its protocol (0 for the
    first setting of a protocol, 1 for its second, ...): the line style or hatch."""
    out: dict[str, int] = {}
    pairs = sorted({(str(protocol_of[g]), str(names[g])) for g in names.index})
    for protocol in sorted({p for p, _ in pairs}):
        for k, label in enumerate(sorted(lab for p, lab in pairs if p == protocol)):
            out[label] = k
    return out


def row_labels(frame: pd.DataFrame) -> tuple[dict[str, str], dict[str, int]]:
    """Per group: its legend label and its setting index within its protocol, both
    computed inside its row of panels (data set × model), so a label names only what
    differs between the curves it sits beside."""
    names: dict[str, str] = {}
    index: dict[str, int] = {}
    for _, sub in frame.groupby(["data", "model"], sort=True):
        here = labels(sub)
        protocol_of = sub.drop_duplicates("group").set_index("group").protocol
        variant = variants(here, protocol_of)
        for gid, label in here.items():
            names[str(gid)], index[str(gid)] = str(label), variant[str(label)]
    return names, index


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
    """The legend below the panels and the note below the legend, placed in inches so
    that a one-row figure never draws its note over its legend."""
    height = fig.get_size_inches()[1]
    rows = 1 + (len(entries) - 1) // 4
    fig.legend(
        list(entries.values()),
        list(entries.keys()),
        loc="upper center",
        ncol=min(4, len(entries)),
        bbox_to_anchor=(0.5, 0.0),
        frameon=False,
        fontsize=8,
    )
    below = (0.12 + 0.24 * rows) / height
    fig.text(0.5, -below, note, ha="center", va="top", fontsize=7, wrap=True)


def _note(*parts: str) -> str:
    """Caption text, wrapped to the figure's width."""
    import textwrap

    return "\n".join(textwrap.fill(p, 110) for p in parts if p)


def curves(
    metrics: pd.DataFrame,
    x: str,
    xlabel: str,
    out: Path,
    name: str,
    logx: bool = False,
    context: str = "",
) -> list[Path]:
    """Test accuracy against ``x``: a panel per data set × model (row) × workers (column),
    one curve per group (mean ± 1 std over seeds)."""
    done = metrics.dropna(subset=["test_acc", x])
    if "status" in done:  # a curve is a finished result: not a failed or running attempt
        done = done[done.status == "completed"]
    if done.empty:
        return []
    b = band(done, x, "test_acc")
    names, variant = row_labels(done)
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
                label = names[str(gid)]
                dash = LINESTYLES[variant[str(gid)] % len(LINESTYLES)]
                ax.plot(g[x], 100 * g["mean"], color=colour, ls=dash, lw=1.4)
                line = Line2D([], [], color=colour, ls=dash, marker=marker, ms=4, lw=1.4)
                ax.fill_between(
                    g[x],
                    100 * (g["mean"] - g["std"]),
                    100 * (g["mean"] + g["std"]),
                    color=colour,
                    alpha=0.2,
                    linewidth=0,
                )
                entries.setdefault(label, line)
            ax.set_title(f"{data}, {model}\n{w} workers", fontsize=9)
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
    _legend(fig, dict(sorted(entries.items())), _note(_seeds_note(b.n), context))
    return save(fig, out, name)


def round_breakdown(
    runs: pd.DataFrame, out: Path, name: str = "round_time_breakdown", context: str = ""
) -> list[Path]:
    """Time per optimizer step (ℓ differs between protocols, so per round would mislead):
    the training clock ÷ steps, split into compute, communication and the rest (what
    neither timer covers: data, synchronising clocks, the loop), grouped by worker count,
    ± 1 std over seeds."""
    done = runs[(runs.status == "completed") & (runs.steps > 0)].copy()
    if done.empty:
        return []
    done["compute"] = done.compute_s / done.steps * 1e3
    done["communication"] = done.comm_s / done.steps * 1e3
    done["total"] = done.train_s / done.steps * 1e3
    done["other"] = (done.total - done.compute - done.communication).clip(lower=0.0)
    names, by_group = row_labels(done)
    done["label"] = done.group.map(names)
    variant = {names[g]: k for g, k in by_group.items()}
    rows = sorted({(str(d), str(m)) for d, m in zip(done.data, done.model, strict=True)})
    fig, axes = plt.subplots(len(rows), 1, figsize=(7.5, 2.8 * len(rows)), squeeze=False)
    entries: dict[str, Any] = {}
    for ax, (data, model) in zip(axes[:, 0], rows, strict=True):
        sub = done[(done.data == data) & (done.model == model)]
        _bars(ax, sub, variant, entries)
        ax.set_ylabel("time per step (ms)")
        ax.set_title(f"{data}, {model}")
        ax.grid(axis="y", alpha=0.3, lw=0.5)
    entries = dict(sorted(entries.items()))
    entries["compute (solid)"] = Patch(facecolor="grey", edgecolor="black", lw=0.4)
    entries["communication (hatched, colour on white)"] = Patch(
        facecolor="white", edgecolor="grey", hatch="////", lw=0.4
    )
    entries["rest of the clock (white)"] = Patch(facecolor="white", edgecolor="black", lw=0.4)
    fig.tight_layout()
    note = (
        "Per optimizer step: the training clock ÷ steps (the whole bar), of which compute "
        "and communication (means over ranks) and the rest the two timers do not cover; "
        "bars: mean over seeds, error bars: ± 1 standard deviation of the total."
    )
    _legend(fig, entries, _note(note, context))
    return save(fig, out, name)


def _bars(ax: Any, sub: pd.DataFrame, variant: dict[str, int], entries: dict[str, Any]) -> None:
    """One stacked bar (compute, communication, rest) per label and worker count."""
    parts = ["compute", "communication", "other", "total"]
    stats = sub.groupby(["workers", "label", "protocol"], sort=True)[parts].agg(["mean", "std"])
    workers = sorted(sub.workers.unique())
    series = sorted(sub.label.unique())
    width = 0.8 / len(series)
    for k, label in enumerate(series):
        protocol = str(sub[sub.label == label].protocol.iloc[0])
        colour, _ = style(protocol)
        hatch = HATCHES[variant[label] % len(HATCHES)]
        for xi, w in enumerate(workers):
            key = (w, label, protocol)
            if key not in stats.index:
                continue
            s = stats.loc[key]
            pos = xi - 0.4 + width * (k + 0.5)
            c, m = s[("compute", "mean")], s[("communication", "mean")]
            ax.bar(pos, c, width, color=colour, hatch=hatch, edgecolor="black", lw=0.4)
            ax.bar(pos, m, width, bottom=c, facecolor="white", edgecolor=colour, hatch="////")
            ax.bar(pos, m, width, bottom=c, fill=False, edgecolor="black", lw=0.4)
            rest = s[("other", "mean")]
            ax.bar(pos, rest, width, bottom=c + m, color="white", edgecolor="black", lw=0.4)
            err = s[("total", "std")]
            ax.errorbar(
                pos, c + m + rest, yerr=0.0 if pd.isna(err) else err, color="black", capsize=2
            )
        entries.setdefault(label, Patch(facecolor=colour, hatch=hatch, edgecolor="black", lw=0.4))
    ax.set_xticks(range(len(workers)), [f"{w} workers" for w in workers])


def scaling(runs: pd.DataFrame, out: Path, name: str = "scaling", context: str = "") -> list[Path]:
    """Training time and final accuracy against workers, per data set × model (rows)."""
    done = runs[runs.status == "completed"].copy()
    if done.empty:
        return []
    done["acc"] = 100 * done.final_test_acc
    names, by_group = row_labels(done)
    done["label"] = done.group.map(names)
    variant = {names[g]: k for g, k in by_group.items()}
    rows = sorted({(str(d), str(m)) for d, m in zip(done.data, done.model, strict=True)})
    fig, axes = plt.subplots(len(rows), 2, figsize=(8, 2.8 * len(rows)), squeeze=False)
    entries: dict[str, Any] = {}
    for i, (data, model) in enumerate(rows):
        sub = done[(done.data == data) & (done.model == model)]
        for ax, column, ylabel in (
            (axes[i][0], "train_s", "training time (s)"),
            (axes[i][1], "acc", "final test accuracy (%)"),
        ):
            series = sorted(sub.label.unique())
            for k, (label, g) in enumerate(sub.groupby("label", sort=True)):
                colour, marker = style(str(g.protocol.iloc[0]))
                dash = LINESTYLES[variant[label] % len(LINESTYLES)]
                m = g.groupby("workers")[column].agg(["mean", "std"]).reset_index()
                # Dodged: series side by side around each worker count, never on top.
                shift = 1 + 0.035 * (k - (len(series) - 1) / 2)
                ax.errorbar(
                    m.workers * shift,
                    m["mean"],
                    yerr=m["std"].fillna(0.0),
                    color=colour,
                    marker=marker,
                    ls=dash,
                    ms=4,
                    capsize=2,
                    lw=1.2,
                )
                entries.setdefault(
                    label, Line2D([], [], color=colour, marker=marker, ls=dash, ms=4)
                )
            ax.set_xticks(sorted(sub.workers.unique()))
            ax.set_xlabel("workers")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{data}, {model}")
            ax.grid(alpha=0.3, lw=0.5)
    fig.tight_layout()
    ns = done.groupby("group").size()
    seeds = _seeds_note(ns).replace("bands", "error bars")
    _legend(
        fig,
        dict(sorted(entries.items())),
        _note(seeds, "Points at one worker count are set slightly apart.", context),
    )
    return save(fig, out, name)
