"""The report's tables, computed from :class:`~suite.report.load.Results`.

A **group** is the set of runs whose semantic configs are identical except the seed
(``runs.group``); a table row is one group, never more. Each table shows the config keys
that vary across its groups (so two rows always differ in a visible column) and puts
the keys that are constant over the table into its caption.

Statistics are over seeds: mean ± sample standard deviation with n shown, and a 95 %
Student-t interval. Two runs with the same seed in one group are an error the cell
shows, not an n = 2. Speedups compare a group only with a baseline group that shares
everything but the protocol and the protocol's own knobs (same data, model, workers,
budget, optimizer, batch, link, precision, ...); where there is none the cell says so.
Time to target follows MLCommons AlgoPerf: a run that never reaches the target counts
as infinitely slow, the median over seeds is reported beside the fraction that reached
it, and a speedup where only one side reached the target is a bound (">4.2×").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from suite.architectures import label_fields
from suite.report.load import NOT_GROUPING, config_columns

#: Config families whose keys belong to the chosen name (a protocol's knobs, a model
#: family's fields): shown inside that column, never as columns of their own.
FAMILIES = ("protocol", "model", "optim")
#: Columns first in every table, in this order.
LEADING = ("data", "model", "protocol", "workers")
#: Then, where they vary, these (before the other keys).
SECOND = ("optim",)
NA = "—"


@dataclass
class Table:
    """A table and what its caption adds: the settings common to every row."""

    frame: pd.DataFrame
    common: str = ""


def summarize(values: pd.Series) -> dict[str, float]:
    """n, mean, sample std and the 95 % t-interval half-width of finite values."""
    v = values.dropna().astype(float).to_numpy()
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci95": math.nan}
    std = float(v.std(ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
    return {"n": n, "mean": float(v.mean()), "std": std, "ci95": half}


def fmt(s: dict[str, float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` (just the mean when n = 1; ``—`` when n = 0)."""
    if s["n"] == 0:
        return NA
    if s["n"] == 1:
        return f"{s['mean'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}"


def fmt_sig(s: dict[str, float], digits: int = 3) -> str:
    """``mean ± std`` with the mean to ``digits`` significant digits and the std to as
    many decimals, so two times that differ show the difference."""
    if s["n"] == 0:
        return NA
    mean = sig(s["mean"], digits)
    if s["n"] == 1:
        return mean
    decimals = len(mean.split(".")[1]) if "." in mean else 0
    return f"{mean} ± {s['std']:.{decimals}f}"


def geomean(values: list[float]) -> float:
    """Geometric mean of positive finite values (NaN if there are none)."""
    v = [x for x in values if x > 0 and math.isfinite(x)]
    return float(math.exp(np.mean(np.log(v)))) if v else math.nan


def _value(v: object) -> str:
    """A config value as shown in a table (missing: ``—``)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return NA
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def protocol_title(name: str) -> str:
    """How tables and figures name a protocol: the ``title`` its class sets (ddp: "data
    parallel"), else its registered name (a class that sets none, a subclass that did not
    set its own, or results of a protocol not installed here)."""
    import protocols

    cls = protocols.load_all().get(name)
    title = cls.__dict__.get("title") if cls is not None else None
    return str(title) if title else name


def _family_label(row: pd.Series, family: str) -> str:
    if family == "optim":
        return str(row.get("optim.name", NA))
    if family == "protocol":
        return protocol_title(str(row["protocol"]))
    return str(row["model"])


def _family_keys(columns: list[str], family: str) -> list[str]:
    return [c for c in columns if c.startswith(f"{family}.") and c != f"{family}.name"]


def settings(firsts: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Per group (one row each, indexed by group id): the columns that tell the groups
    apart, and a caption line with everything constant over them."""
    columns = [c for c in config_columns(firsts) if c not in NOT_GROUPING]
    shown = pd.DataFrame(index=firsts.index)
    common: list[str] = []  # plain keys first, then each protocol's and model's knobs
    knobs: list[str] = []
    families = {f: _family_keys(columns, f) for f in FAMILIES}
    in_family = {c for keys in families.values() for c in keys}
    in_family |= {"protocol.name", "model.name", "optim.name"}
    in_label = label_fields()  # what the model's label (preact_resnet101x0.125) names
    families["model"] = [c for c in families["model"] if c not in in_label]
    for family, keys in families.items():
        labels = firsts.apply(lambda r, f=family: _family_label(r, f), axis=1)
        extra = pd.Series("", index=firsts.index)
        for label in sorted(labels.unique()):
            rows = firsts[labels == label]
            fixed = []
            for key in keys:
                values = rows[key].map(_value)
                if values.eq(NA).all():
                    continue  # not a knob of this protocol / model family
                name = key.split(".", 1)[1]
                if values.nunique() > 1:
                    extra.loc[rows.index] += values.map(lambda v, n=name: f", {n}={v}")
                else:
                    fixed.append(f"{name}={values.iloc[0]}")
            if fixed:
                knobs.append(f"{label}: {', '.join(fixed)}")
        text = labels + extra.map(lambda e: f" ({e[2:]})" if e else "")
        if family in LEADING or text.nunique() > 1:  # the optimizer only where it varies
            shown[family] = text
    for key in (c for c in columns if c not in in_family):
        values = firsts[key].map(_value)
        label = "data" if key == "data.name" else key
        applies = values[values != NA]  # "—": the key does not apply to that group
        if label in LEADING:  # always a column, so every row reads on its own
            shown[label] = firsts[key].astype(int) if key == "workers" else values
        elif applies.nunique() > 1:
            shown[label] = values
        elif len(applies):
            where = " (where it applies)" if len(applies) < len(values) else ""
            common.append(f"{label}={applies.iloc[0]}{where}")
    lead = [c for c in (*LEADING, *SECOND) if c in shown]
    rest = sorted(c for c in shown if c not in lead)
    return shown[lead + rest], "; ".join([", ".join(common), *knobs] if common else knobs)


def _firsts(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per group (its first run), indexed by group id, in a readable order."""
    firsts = runs.drop_duplicates("group")
    firsts = firsts.sort_values([c for c in LEADING if c in firsts] + ["group"], kind="stable")
    return firsts.set_index(firsts["group"].rename(None))


def duplicate_seeds(group: pd.DataFrame) -> str | None:
    """An error text when one seed appears more than once in a group, else None."""
    counts = group["seed"].value_counts()
    dup = sorted(int(s) for s in counts[counts > 1].index)
    if not dup:
        return None
    return "error: " + ", ".join(f"seed {s} ×{counts[s]}" for s in dup)


def _status_note(group: pd.DataFrame) -> str:
    counts = group["status"].value_counts()
    bad = [f"{counts[s]} {s}" for s in ("failed", "diverged", "incomplete") if s in counts]
    return ", ".join(bad) if bad else NA


def _table(runs: pd.DataFrame, rows: dict[str, dict[str, object]]) -> Table:
    """The per-group ``rows`` with the columns that tell the groups apart in front."""
    firsts = _firsts(runs)
    shown, common = settings(firsts)
    body = pd.DataFrame.from_dict(rows, orient="index")
    frame = shown.join(body).reset_index(drop=True) if len(body) else shown.iloc[0:0]
    return Table(frame, common)


def accuracy_table(runs: pd.DataFrame) -> Table:
    """Final test accuracy (%) per group over completed seeds."""
    rows: dict[str, dict[str, object]] = {}
    for gid, group in runs.groupby("group", sort=False):
        done = group[group.status == "completed"]
        s = summarize(done["final_test_acc"])
        dup = duplicate_seeds(done)
        rows[gid] = {
            "test acc (%)": dup or fmt(s, 100),
            "95% CI": NA if dup or math.isnan(s["ci95"]) else f"± {100 * s['ci95']:.2f}",
            "n": str(s["n"]),
            "not completed": _status_note(group),
        }
    return _table(runs, rows)


def baseline_key(firsts: pd.DataFrame) -> pd.Series:
    """What a group shares with its like baseline: every config key except the seed,
    the protocol and the protocol's own knobs."""
    keys = [
        c for c in config_columns(firsts) if c not in NOT_GROUPING and not c.startswith("protocol.")
    ]
    return firsts[keys].map(_value).apply(tuple, axis=1)


def _baselines(runs: pd.DataFrame, baseline: str) -> dict[str, str | list[str]]:
    """For each group: its like baseline group id, or a text saying why there is none."""
    firsts = _firsts(runs)
    key = baseline_key(firsts)
    out: dict[str, str | list[str]] = {}
    for gid in firsts.index:
        same = firsts.index[(key == key[gid]) & (firsts.protocol == baseline)]
        if len(same) == 0:
            out[gid] = f"no {protocol_title(baseline)} run with these settings"
        else:
            out[gid] = list(same)
    return out


def time_table(runs: pd.DataFrame, baseline: str) -> Table:
    """Total training time (s) per group and speedup over its like ``baseline`` group."""
    done = runs[runs.status == "completed"]
    if done.empty:
        return Table(pd.DataFrame())
    means: dict[str, float] = {}
    rows: dict[str, dict[str, object]] = {}
    for gid, group in done.groupby("group", sort=False):
        s = summarize(group["train_s"])
        dup = duplicate_seeds(group)
        means[gid] = math.nan if dup else s["mean"]
        rows[gid] = {"train time (s)": dup or fmt_sig(s), "n": str(s["n"])}

    def ratio(gid: str, base: str) -> tuple[str, float | None]:
        if math.isnan(means[gid]) or math.isnan(means[base]):
            return NA, None
        value = means[base] / means[gid]
        return f"{value:.2f}×", value

    speedups = _speedup_cells(rows, _baselines(done, baseline), baseline, ratio)
    return _with_geomean(_table(done, rows), done, speedups)


def _speedup_cells(
    rows: dict[str, dict[str, object]],
    bases: dict[str, str | list[str]],
    baseline: str,
    ratio: Callable[[str, str], tuple[str, float | None]],
) -> dict[str, float]:
    """Each row's speedup cell: the baseline's own row, a row without one like baseline
    (or with several), else ``ratio(group, its baseline's group)`` (the cell, and the
    value when it is a plain ratio, not a bound). The plain ratios, for the geo. mean."""
    speedups: dict[str, float] = {}
    for gid, row in rows.items():
        base = bases[gid]
        if isinstance(base, str):
            row["speedup"] = base
        elif len(base) > 1:
            row["speedup"] = f"{len(base)} {protocol_title(baseline)} groups with these settings"
        elif base[0] == gid:
            row["speedup"] = "1.00× (baseline)"
        else:
            row["speedup"], value = ratio(gid, base[0])
            if value is not None:
                speedups[gid] = value
    return speedups


def _with_geomean(table: Table, runs: pd.DataFrame, speedups: dict[str, float]) -> Table:
    """One geometric-mean row per protocol label over the rows with a numeric speedup,
    saying which rows it leaves out (bounds, no baseline, the baseline itself)."""
    if not speedups:
        return table
    firsts = _firsts(runs)
    shown, _ = settings(firsts)
    extra = []
    for label, gids in shown.groupby("protocol").groups.items():
        values = [speedups[g] for g in gids if g in speedups]
        if values:
            row = {c: "all" for c in shown.columns}
            row |= {"protocol": label, "speedup": f"{geomean(values):.2f}×"}
            left = len(gids) - len(values)
            covers = f"geo. mean of {len(values)} of {len(gids)} rows"
            if left:
                covers += f" ({left} left out: bounds or no like baseline)"
            row[table.frame.columns[len(shown.columns)]] = covers
            extra.append(row)
    frame = pd.concat([table.frame, pd.DataFrame(extra)], ignore_index=True)
    return Table(frame.fillna("").astype(str), table.common)


def reach_times(runs: pd.DataFrame, metrics: pd.DataFrame, target: float) -> pd.Series:
    """Per run: training time when test accuracy first reached ``target``; ∞ if never."""
    reached: dict[str, float] = {}
    if not metrics.empty:
        hit = metrics[metrics.test_acc >= target]
        reached = hit.groupby("run")["train_s"].min().to_dict()
    return pd.Series([reached.get(r, math.inf) for r in runs.run], index=runs.index)


def time_to_target(
    runs: pd.DataFrame, metrics: pd.DataFrame, target: float, baseline: str
) -> Table:
    """Median training time to ``target`` test accuracy over seeds (AlgoPerf: a run that
    never reaches it counts as ∞), the fraction of seeds that reached it, and the speedup
    over the like baseline (a bound when only one side reached the target)."""
    if runs.empty:
        return Table(pd.DataFrame())
    times = reach_times(runs, metrics, target)
    # A lower bound for a run that never reached the target: it trained this long without.
    floor = times.where(np.isfinite(times), runs["train_s"].fillna(0.0).astype(float))
    medians: dict[str, tuple[float, float]] = {}
    rows: dict[str, dict[str, object]] = {}
    label = f"median time to {100 * target:g}% (s)"
    for gid, group in runs.groupby("group", sort=False):
        t = times[group.index]
        dup = duplicate_seeds(group)
        medians[gid] = (float(np.median(t)), float(np.median(floor[group.index])))
        reached = int(np.isfinite(t).sum())
        median = medians[gid][0]
        rows[gid] = {
            label: dup or (sig(median) if math.isfinite(median) else "∞ (not reached)"),
            "reached": f"{reached}/{len(group)}",
        }
        if dup:
            medians[gid] = (math.nan, math.nan)

    def ratio(gid: str, base: str) -> tuple[str, float | None]:
        (mine, mine_floor), (theirs, theirs_floor) = medians[gid], medians[base]
        if math.isnan(mine) or math.isnan(theirs):
            return NA, None
        if math.isfinite(mine) and math.isfinite(theirs):
            return f"{theirs / mine:.2f}×", theirs / mine
        if math.isfinite(mine):  # only this protocol reached it: at least this fast
            return (f">{theirs_floor / mine:.2f}×" if theirs_floor > 0 else ">1×"), None
        if math.isfinite(theirs):  # only the baseline did: at most this fast
            return (f"<{theirs / mine_floor:.2f}×" if mine_floor > 0 else NA), None
        return "neither reached", None

    speedups = _speedup_cells(rows, _baselines(runs, baseline), baseline, ratio)
    return _with_geomean(_table(runs, rows), runs, speedups)


def comm_from_runs(runs: pd.DataFrame) -> Table:
    """Recorded MB per round (the suite's convention and the papers'), per group, to
    three significant digits (a compressed protocol's small counts stay readable)."""
    done = runs[(runs.status == "completed") & (runs.rounds > 0)].copy()
    if done.empty:
        return Table(pd.DataFrame())
    done["moved_round"] = done["bytes_moved"] / done["rounds"] / 1e6
    done["mb_round"] = done["bytes"] / done["rounds"] / 1e6
    rows: dict[str, dict[str, object]] = {}
    for gid, group in done.groupby("group", sort=False):
        rows[str(gid)] = {
            "steps per round": _num(group.steps.sum() / group.rounds.sum(), 1),
            "MB per round (moved)": sig(group.moved_round.mean()),
            "MB per round (paper)": sig(group.mb_round.mean()),
            "total GB (moved)": sig(group["bytes_moved"].mean() / 1e9),
        }
    return _table(done, rows)


def sig(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, never in exponent form."""
    if pd.isna(value):
        return NA
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def runs_table(runs: pd.DataFrame) -> Table:
    """Every run with its group and status; failed and diverged runs keep their error."""
    cols = ["run", "group", "protocol", "workers", "seed", "status", "final_test_acc", "train_s"]
    table = runs[cols].copy()
    acc = table["final_test_acc"]
    table["final_test_acc"] = [NA if pd.isna(v) else f"{100 * v:.2f}" for v in acc]
    table["train_s"] = [NA if pd.isna(v) else f"{v:.1f}" for v in table["train_s"]]
    table["note"] = [
        "" if s == "completed" else str(e or s)[:80]
        for s, e in zip(runs["status"], runs["error"], strict=True)
    ]
    return Table(table.reset_index(drop=True))


def _num(value: float, digits: int = 4) -> str:
    return NA if pd.isna(value) else f"{value:.{digits}f}"
