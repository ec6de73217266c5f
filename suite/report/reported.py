"""What the papers reported, stored as data (``reported.csv``), beside what we reproduced.

A reported number is matched by runs of the same protocol, worker count, data set and
model (the paper's network); where no such run exists the table says so.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from suite.report.analysis import summarize

REPORTED = Path(__file__).with_name("reported.csv")


def reported() -> pd.DataFrame:
    """The papers' numbers as a data frame."""
    return pd.read_csv(REPORTED, comment="#", dtype={"workers": "Int64"})


def compare(runs: pd.DataFrame, paper_table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Reported vs reproduced: mean over matching completed runs, and the difference."""
    paper_table = reported() if paper_table is None else paper_table
    done = runs[runs.status == "completed"]
    rows = []
    for r in paper_table.itertuples(index=False):
        match = done[
            (done.protocol == r.protocol)
            & (done.data == r.data)
            & (done.model == r.model)
            & (pd.isna(r.workers) | (done.workers == r.workers))
        ]
        column = "final_test_acc" if r.metric == "test_acc_pct" else "train_s"
        scale = 100.0 if r.metric == "test_acc_pct" else 1.0
        s = summarize(match[column] * scale)
        reported_text = f"{r.value:g}" + ("" if pd.isna(r.std) else f" ± {r.std:g}")
        rows.append(
            {
                "paper": r.paper,
                "table": r.table,
                "metric": r.metric,
                "protocol": r.protocol,
                "workers": "—" if pd.isna(r.workers) else int(r.workers),
                "data": r.data,
                "reported": reported_text,
                "reproduced": "not run" if s["n"] == 0 else f"{s['mean']:.2f} (n={s['n']})",
                "difference": "—" if s["n"] == 0 else f"{s['mean'] - r.value:+.2f}",
            }
        )
    return pd.DataFrame(rows)
