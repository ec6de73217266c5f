"""The claims table: each quantitative claim of the papers, tested on the runs at hand.

Claims are data (``claims.csv`` beside this file, plus any file a plugin declares under
the ``commbench.claims`` entry point group), never code. For each claim and each setting
where the claim's protocol and its baseline both ran alike (every semantic config key
equal but the seed, the protocol and its own knobs, and the sections the claim lets
differ), one row: the paper's value, the suite's measured counterpart with a 95 %
interval, and a verdict:

- ``acc_diff``: mean final test accuracy of the protocol minus the baseline's, in
  percentage points, with Welch's t interval (unequal variances);
- ``time_ratio`` / ``ttt_ratio``: the baseline's mean training time (to the claim's
  target accuracy, for ``ttt_ratio``) over the protocol's, a speedup, with Welch's
  interval on the log scale (the ratio of geometric means). A run that never reached
  the target leaves the interval undefined: the row says how many reached it;
- ``comm_ratio``: the protocol's recorded bytes per round over the baseline's (paper
  convention); ``bytes_ratio``: the baseline's total bytes over the protocol's. Both
  are exact (deterministic counts), so they have no interval.

Verdict: **holds** when the whole interval lies on the claim's side of its threshold,
**does not hold** when it lies wholly on the other side, otherwise **inconclusive at
this n** (also when either side has fewer than two completed seeds).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from suite.report.analysis import NA, Table, _firsts, protocol_title, reach_times
from suite.report.load import NOT_GROUPING, config_columns

CLAIMS_CSV = Path(__file__).with_name("claims.csv")
ENTRY_POINT_GROUP = "commbench.claims"
#: Data sets that are too small to say anything about a paper's claim.
TOY_DATA = ("digits", "synthetic")
COLUMNS = (
    "id",
    "paper",
    "claim",
    "paper_value",
    "quantity",
    "protocol",
    "baseline",
    "model",
    "workers",
    "op",
    "threshold",
    "target",
    "differ",
)


def load_claims(extra: list[Path] | None = None) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The suite's claims and every plugin's (``commbench.claims`` entry points, each a
    path to a CSV with the same columns); returns them and the files that failed."""
    frames = [_read(CLAIMS_CSV)]
    problems: list[tuple[str, str]] = []
    sources: list[tuple[str, Callable[[], Any]]] = [(str(p), partial(Path, p)) for p in extra or []]
    sources += [
        (f"{ep.name} ({ep.value})", ep.load)
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)
    ]
    for name, load in sources:
        try:
            frames.append(_read(Path(str(load()))))
        except Exception as err:  # a plugin's broken file never stops the report
            problems.append((name, f"claims not read: {type(err).__name__}: {err}"))
    return pd.concat(frames, ignore_index=True), problems


def _read(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, comment="#", dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in frame.columns and c != "differ"]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    if "differ" not in frame.columns:
        frame["differ"] = ""
    return frame[list(COLUMNS)]


@dataclass(frozen=True)
class Estimate:
    """A measured counterpart: the point value and its 95 % interval (NaN: none)."""

    value: float
    low: float = math.nan
    high: float = math.nan
    note: str = ""


def welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its 95 % Welch interval (NaN bounds when n < 2 on a side)."""
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.975, df)) * se
    return diff, diff - half, diff + half


def _ratio(base: np.ndarray, mine: np.ndarray) -> Estimate:
    """base / mine as a ratio of geometric means, interval from Welch on the logs."""
    d, lo, hi = welch(np.log(base), np.log(mine))
    return Estimate(math.exp(d), math.exp(lo), math.exp(hi))


def estimate(
    claim: pd.Series, mine: pd.DataFrame, base: pd.DataFrame, metrics: pd.DataFrame
) -> Estimate:
    """The measured counterpart of ``claim`` from the completed runs of both groups."""
    q = claim["quantity"]
    if q == "acc_diff":
        d, lo, hi = welch(_col(mine, "final_test_acc"), _col(base, "final_test_acc"))
        return Estimate(100 * d, 100 * lo, 100 * hi)
    if q == "time_ratio":
        return _ratio(_col(base, "train_s"), _col(mine, "train_s"))
    if q == "ttt_ratio":
        target = float(claim["target"])
        t_mine = reach_times(mine, metrics, target).to_numpy(float)
        t_base = reach_times(base, metrics, target).to_numpy(float)
        if not (np.isfinite(t_mine).all() and np.isfinite(t_base).all()):
            note = (
                f"reached {100 * target:g}%: {int(np.isfinite(t_mine).sum())}/{len(t_mine)} "
                f"vs {int(np.isfinite(t_base).sum())}/{len(t_base)}"
            )
            return Estimate(math.nan, note=note)
        return _ratio(t_base, t_mine)
    per_round = {
        "comm_ratio": lambda f: _col(f, "bytes") / _col(f, "rounds"),
        "bytes_ratio": lambda f: 1.0 / _col(f, "bytes"),
    }
    if q in per_round:
        value = float(per_round[q](mine).mean() / per_round[q](base).mean())
        return Estimate(value, value, value)
    raise ValueError(f"claim {claim['id']}: unknown quantity {q!r}")


def _col(frame: pd.DataFrame, column: str) -> np.ndarray:
    return frame[column].astype(float).to_numpy()


def verdict(est: Estimate, op: str, threshold: float) -> str:
    """holds / does not hold / inconclusive at this n (see the module docstring)."""
    if math.isnan(est.low) or math.isnan(est.high):
        return "inconclusive at this n"
    above, below = est.low >= threshold, est.high < threshold
    if op == "<=":
        above, below = est.high <= threshold, est.low > threshold
    if above:
        return "holds"
    return "does not hold" if below else "inconclusive at this n"


def pairs(runs: pd.DataFrame, claim: pd.Series) -> list[tuple[str, str]]:
    """(protocol group, baseline group) ids that ran alike, for one claim."""
    firsts = _firsts(runs[runs.status == "completed"])
    if firsts.empty:
        return []
    differ = tuple(f"{s.strip()}." for s in str(claim["differ"]).split(";") if s.strip())
    keys = [
        c
        for c in config_columns(firsts)
        if c not in NOT_GROUPING and not c.startswith(("protocol.", *differ))
    ]
    key = firsts[keys].astype(str).apply(tuple, axis=1)
    model_ok = firsts.model.map(lambda m: fnmatch.fnmatch(str(m), claim["model"] or "*"))
    workers_ok = firsts.workers.astype(str).eq(claim["workers"]) if claim["workers"] else True
    mine = firsts[(firsts.protocol == claim["protocol"]) & model_ok & workers_ok]
    found = []
    for gid in mine.index:
        same = firsts.index[(key == key[gid]) & (firsts.protocol == claim["baseline"])]
        found += [(str(gid), str(b)) for b in same]
    return found


def _threshold(claim: pd.Series, mine: pd.DataFrame) -> float:
    """A number, a config key (its value in the protocol's runs: ``protocol.local_steps``)
    or ``factor*key``."""
    factor, _, raw = str(claim["threshold"]).rpartition("*")
    try:
        value = float(raw)
    except ValueError:
        value = float(mine[raw].iloc[0])
    return float(factor or 1) * value


def _fmt(est: Estimate, quantity: str) -> tuple[str, str]:
    unit = " pp" if quantity == "acc_diff" else "×"
    sign = "+" if quantity == "acc_diff" else ""
    if math.isnan(est.value):
        return NA, est.note or NA
    value = f"{est.value:{sign}.2f}{unit}" if quantity == "acc_diff" else f"{est.value:.3g}×"
    if math.isnan(est.low):
        return value, est.note or "— (n < 2)"
    if est.low == est.high:
        return value, "exact"
    if quantity == "acc_diff":
        return value, f"[{est.low:+.2f}, {est.high:+.2f}]"
    return value, f"[{est.low:.3g}, {est.high:.3g}]"


def claims_table(
    runs: pd.DataFrame, metrics: pd.DataFrame, claims: pd.DataFrame
) -> tuple[Table, str, str]:
    """Every claim × setting: the paper's value, ours with its interval, the verdict."""
    rows = []
    for _, claim in claims.iterrows():
        found = pairs(runs, claim)
        for gid, bid in found:
            mine, base = (
                runs[(runs.group == g) & (runs.status == "completed")] for g in (gid, bid)
            )
            est = estimate(claim, mine, base, metrics)
            threshold = _threshold(claim, mine)
            value, interval = _fmt(est, claim["quantity"])
            first = mine.iloc[0]
            scale = "toy scale" if first["data"] in TOY_DATA else "real data"
            rows.append(
                {
                    "claim": claim["id"],
                    "statement": claim["claim"],
                    "paper": claim["paper_value"],
                    "data": f"{first['data']} ({scale})",
                    "model": first["model"],
                    "workers": int(first["workers"]),
                    "n": f"{len(mine)} vs {len(base)} ({protocol_title(claim['baseline'])})",
                    "measured": value,
                    "95% interval": interval,
                    "holds if": f"{claim['op']} {threshold:g}",
                    "verdict": verdict(est, claim["op"], threshold) if value != NA else "no data",
                }
            )
        if not found:
            rows.append(_not_run(claim))
    caption = "The papers' claims tested on the runs at hand"
    note = (
        "One row per claim and setting where the protocol and its baseline ran alike (every "
        "semantic config key equal but the seed and the protocol's own knobs). acc: "
        "protocol minus baseline in percentage points, Welch 95 % interval; speedups: "
        "baseline time over protocol time, ratio of geometric means with Welch's interval "
        "on the log scale; byte ratios are exact counts. holds: the whole interval on the "
        "claim's side of the threshold; does not hold: wholly on the other; otherwise "
        "inconclusive at this n. Toy-scale rows (digits) say little about the papers' "
        "settings. Claims are data: suite/report/claims.csv and plugins' files."
    )
    return Table(pd.DataFrame(rows)), caption, note


def _not_run(claim: pd.Series) -> dict[str, object]:
    return {
        "claim": claim["id"],
        "statement": claim["claim"],
        "paper": claim["paper_value"],
        "data": NA,
        "model": claim["model"],
        "workers": NA,
        "n": (
            f"0 (no {protocol_title(claim['protocol'])} and "
            f"{protocol_title(claim['baseline'])} runs alike)"
        ),
        "measured": NA,
        "95% interval": NA,
        "holds if": f"{claim['op']} {claim['threshold']}",
        "verdict": "not run",
    }
