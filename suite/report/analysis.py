"""The report's tables, computed from :class:`~suite.report.load.Results`.

Statistics are over seeds: mean ± sample standard deviation with n shown, and a 95 %
Student-t interval. Speedups are ratios of mean times against a baseline protocol at
the same data set and worker count, and across settings their geometric mean. Runs
that failed or diverged are counted and shown, never dropped.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

SETTING = ["data", "workers", "protocol", "model"]


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
        return "—"
    if s["n"] == 1:
        return f"{s['mean'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}"


def geomean(values: list[float]) -> float:
    """Geometric mean of positive finite values (NaN if there are none)."""
    v = [x for x in values if x > 0 and math.isfinite(x)]
    return float(math.exp(np.mean(np.log(v)))) if v else math.nan


def _status_note(group: pd.DataFrame) -> str:
    counts = group["status"].value_counts()
    bad = [f"{counts[s]} {s}" for s in ("failed", "diverged", "incomplete") if s in counts]
    return ", ".join(bad) if bad else "—"


def accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Final test accuracy (%) per data set × protocol × workers over completed seeds."""
    rows = []
    for key, group in runs.groupby(SETTING, sort=True):
        setting = dict(zip(SETTING, key, strict=True))
        done = group[group.status == "completed"]
        s = summarize(done["final_test_acc"])
        rows.append(
            {
                **{k: setting[k] for k in ("data", "protocol", "model", "workers")},
                "test acc (%)": fmt(s, 100),
                "95% CI": "—" if math.isnan(s["ci95"]) else f"± {100 * s['ci95']:.2f}",
                "n": s["n"],
                "not completed": _status_note(group),
            }
        )
    return pd.DataFrame(rows)


def _speedups(table: pd.DataFrame, value: str, baseline: str) -> pd.Series:
    # Against the baseline on the same data, workers and model: other models don't compare.
    base = table[table.protocol == baseline].set_index(["data", "workers", "model"])[value]
    return table.apply(
        lambda r: (
            base.get((r.data, r.workers, r.model), math.nan) / r[value] if r[value] else math.nan
        ),
        axis=1,
    )


def time_table(runs: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Total training time (s) and speedup over ``baseline`` at the same data and workers."""
    done = runs[runs.status == "completed"]
    rows = []
    for key, group in done.groupby(SETTING, sort=True):
        setting = dict(zip(SETTING, key, strict=True))
        s = summarize(group["train_s"])
        rows.append(
            {
                **setting,
                "mean": s["mean"],
                "train time (s)": fmt(s, 1, 1),
                "n": s["n"],
            }
        )
    table = pd.DataFrame(
        rows, columns=["data", "workers", "protocol", "model", "mean", "train time (s)", "n"]
    )
    table["speedup"] = _speedups(table, "mean", baseline)
    return _with_geomean(table, baseline)


def time_to_target(
    runs: pd.DataFrame, metrics: pd.DataFrame, target: float, baseline: str
) -> pd.DataFrame:
    """Training time until test accuracy first reaches ``target``, and its speedup."""
    reached = {}
    if not metrics.empty:
        hit = metrics[metrics.test_acc >= target]
        reached = hit.groupby("run")["train_s"].min().to_dict()
    rows = []
    for key, group in runs.groupby(SETTING, sort=True):
        setting = dict(zip(SETTING, key, strict=True))
        times = pd.Series([reached.get(r, math.nan) for r in group.run])
        s = summarize(times)
        rows.append(
            {
                **setting,
                "mean": s["mean"],
                f"time to {100 * target:g}% (s)": fmt(s, 1, 1),
                "reached": f"{s['n']}/{len(group)}",
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["speedup"] = _speedups(table, "mean", baseline)
    return _with_geomean(table, baseline, "reached")


def _with_geomean(table: pd.DataFrame, baseline: str, label: str = "n") -> pd.DataFrame:
    """Format speedups and add one geometric-mean row per non-baseline protocol."""
    extra = []
    for protocol, group in table[table.protocol != baseline].groupby("protocol"):
        g = geomean(group["speedup"].tolist())
        if not math.isnan(g):
            extra.append(
                {
                    "data": "all",
                    "workers": "all",
                    "protocol": protocol,
                    "model": "all",
                    "speedup": g,
                    label: "geo. mean",
                }
            )
    table = pd.concat([table, pd.DataFrame(extra)], ignore_index=True) if extra else table
    table["speedup"] = [
        "—" if pd.isna(v) else ("1.00× (baseline)" if p == baseline else f"{v:.2f}×")
        for v, p in zip(table["speedup"], table["protocol"], strict=True)
    ]
    return table.drop(columns=["mean"]).fillna("").astype(str)


def comm_from_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Recorded GB per round (paper convention and actually moved), per setting."""
    done = runs[(runs.status == "completed") & (runs.rounds > 0)].copy()
    done["gb_round"] = done["bytes"] / done["rounds"] / 1e9
    done["moved_round"] = done["bytes_moved"] / done["rounds"] / 1e9
    rows = []
    for key, group in done.groupby(SETTING, sort=True):
        setting = dict(zip(SETTING, key, strict=True))
        rows.append(
            {
                **setting,
                "local steps": int(group.local_steps.iloc[0]),
                "GB per round (paper)": _num(group.gb_round.mean()),
                "GB per round (moved)": _num(group.moved_round.mean()),
                "total GB": f"{group['bytes'].mean() / 1e9:.3f}",
            }
        )
    return pd.DataFrame(rows)


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run with its status; failed and diverged runs keep their error."""
    cols = ["run", "data", "protocol", "workers", "seed", "status", "final_test_acc", "train_s"]
    table = runs[cols].copy()
    table["final_test_acc"] = [
        "—" if pd.isna(v) else f"{100 * v:.2f}" for v in table["final_test_acc"]
    ]
    table["train_s"] = ["—" if pd.isna(v) else f"{v:.1f}" for v in table["train_s"]]
    table["note"] = [
        "" if s == "completed" else str(e or s)[:80]
        for s, e in zip(runs["status"], runs["error"], strict=True)
    ]
    return table


def _num(value: float, digits: int = 4) -> str:
    return "—" if pd.isna(value) else f"{value:.{digits}f}"
