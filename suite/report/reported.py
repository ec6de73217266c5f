"""What the papers reported, stored as data (``reported.csv``), beside what we reproduced.

Each reported number names the preset that reproduces its setting (``experiment``, a
file of ``suite/conf/experiment``) and the data set. The preset is composed exactly as
``python -m suite.run +experiment=<it> data=<data> workers=<workers>`` would compose it,
and a run matches the row when its semantic config equals the preset's in every key but
the seed and the keys that say where and how it ran (``device``, an emulated ``link``,
the memory layout): data, model, protocol, workers and the recipe (ℓ, minimum depth,
optimizer, batch, budget, sharding) all have to agree, and nothing else is matched. A
user who runs the presets on a cluster gets this table filled without editing anything.

An optional ``overrides`` column adds Hydra overrides to a row's preset (the tests use
it to shrink a paper setting to a few seconds, and shrink their copy of the rows the
same way). Where the paper does not state the worker count, each worker count found
in the results gets a row of its own.

``projected`` is the cost model's prediction (``suite.bench.costmodel``) of the paper's
training time in the paper's setting, under assumptions stated under the table.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from suite.report.analysis import NA, Table, protocol_title, summarize

REPORTED = Path(__file__).with_name("reported.csv")
#: Semantic keys a paper row does not constrain: where and how a run executed.
EXECUTION_KEYS = ("seed", "device", "link", "train.channels_last")
#: Assumptions of the ``projected`` column (the paper's GPU cluster, not measured here).
PROJECTION = {"tflops_per_gpu": 8.0, "link_gbit": 10.0, "latency_us_per_hop": 50.0}


def reported() -> pd.DataFrame:
    """The papers' numbers as a data frame."""
    df = pd.read_csv(REPORTED, comment="#", dtype={"workers": "Int64", "value": str, "std": str})
    if "overrides" not in df:
        df["overrides"] = ""
    df["overrides"] = df["overrides"].fillna("")
    return df


def preset_overrides(row: Any) -> list[str]:
    """The command-line overrides that give a paper row's setting."""
    out = [f"+experiment={row.experiment}", f"data={row.data}"]
    if not pd.isna(row.workers):
        out.append(f"workers={int(row.workers)}")
    return out + str(row.overrides or "").split()


def _compose(overrides: tuple[str, ...]) -> dict[str, Any]:
    """A preset's flattened semantic config."""
    from suite.config import flatten_config
    from suite.problem import parse_run_config
    from suite.sweep import compose

    return flatten_config(parse_run_config(compose(overrides)).semantic_dict())


def matching(runs: pd.DataFrame, expected: dict[str, Any], any_workers: bool) -> pd.DataFrame:
    """Completed runs whose semantic config equals ``expected`` in every recipe key."""
    from suite.report.analysis import _value  # the one rendering of config values

    ignore = set(EXECUTION_KEYS) | ({"workers"} if any_workers else set())
    from suite.report.load import config_columns

    keys = sorted((set(expected) | set(config_columns(runs))) - ignore)
    done = runs[runs.status == "completed"]
    if done.empty:
        return done
    want = tuple(_value(expected.get(k)) for k in keys)
    have = done.reindex(columns=keys).map(_value).apply(tuple, axis=1)
    return done[have == want]


def compare(runs: pd.DataFrame, paper_table: pd.DataFrame | None = None) -> tuple[Table, str, str]:
    """Reported vs reproduced: mean over the completed runs of each row's preset, the
    difference, and the cost model's projection; with the table's caption and note."""
    paper_table = reported() if paper_table is None else paper_table
    rows = []
    for r in paper_table.itertuples(index=False):
        expected = _compose(tuple(preset_overrides(r)))
        match = matching(runs, expected, any_workers=pd.isna(r.workers))
        column = "final_test_acc" if r.metric == "test_acc_pct" else "train_s"
        scale = 100.0 if r.metric == "test_acc_pct" else 1.0
        reported_text = str(r.value) + ("" if pd.isna(r.std) else f" ± {r.std}")
        by_workers: list[tuple[int | None, pd.DataFrame]] = (
            [(int(r.workers), match)]
            if not pd.isna(r.workers)
            else [(int(w), g) for w, g in match.groupby("workers")] or [(None, match)]
        )
        for workers, runs_here in by_workers:
            s = summarize(runs_here[column] * scale)
            projected = _projected(r, workers, expected) if r.metric == "train_s" else None
            rows.append(
                {
                    "paper": r.paper,
                    "table": r.table,
                    "metric": r.metric,
                    "protocol": protocol_title(r.protocol),
                    "workers": NA if workers is None else workers,
                    "data": r.data,
                    "model": r.model,
                    "preset": r.experiment,
                    "reported": reported_text,
                    "reproduced": "not run" if s["n"] == 0 else f"{s['mean']:.2f} (n={s['n']})",
                    "difference": NA if s["n"] == 0 else f"{s['mean'] - float(r.value):+.2f}",
                    "projected": NA if projected is None else f"{projected:.0f}",
                }
            )
    note = (
        "A row is matched by the completed runs of its preset (suite/conf/experiment) with "
        "the same data set and workers: every semantic config key equal but the seed, the "
        "device, an emulated link and the memory layout; 'not run' means no such run was "
        "read. workers '—': the paper does not state it (a row per worker count found). "
        "projected: the cost model (python -m suite.bench.costmodel) for the preset's "
        "setting on the paper's hardware, an assumption, not a measurement: the full "
        f"model's multiply-accumulates × 6 FLOPs at {PROJECTION['tflops_per_gpu']:g} TFLOP/s "
        f"sustained per GPU (about half a V100's fp32 peak), {PROJECTION['link_gbit']:g} "
        f"Gbit/s links, {PROJECTION['latency_us_per_hop']:g} µs per message, the bytes of "
        "each protocol's paper_bytes_per_round; only for reported times."
    )
    return Table(pd.DataFrame(rows)), "Reported in the papers vs reproduced here", note


def _projected(row: Any, workers: int | None, expected: dict[str, Any]) -> float | None:
    """The cost model's training time (s) for a reported time's setting, or None."""
    if workers is None:
        return None
    return _projection(
        str(row.protocol),
        workers,
        str(row.data),
        int(expected["data.batch_size"]),
        int(expected.get("protocol.local_steps", 1) or 1),
        float(expected["train.data_epochs"]),
        int(expected.get("protocol.min_depth", 0) or 0),
    )


@cache
def _projection(
    protocol: str, workers: int, data: str, batch: int, ell: int, epochs: float, depth: int
) -> float | None:
    import protocols
    from suite.costmodel import Link, project
    from suite.report.comm import paper_info, paper_model

    classes = {"cifar10": 10, "cifar100": 100}.get(data)
    if classes is None:
        return None
    link = Link(PROJECTION["link_gbit"] * 1e9, PROJECTION["latency_us_per_hop"] * 1e-6)
    setting = {"batch": batch, "data_epochs": epochs, "num_train": 50_000}
    values: dict[str, Any] = {"name": protocol, "local_steps": ell}
    if depth:
        values["min_depth"] = depth
    cfg = protocols.parse_config(values)
    info = paper_info(paper_model(classes), batch)
    (row,) = project(info, [cfg], workers, PROJECTION["tflops_per_gpu"], link, setting)
    return float(row["train_s"]) if math.isfinite(row["train_s"]) else None
