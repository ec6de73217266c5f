"""Run folders → tidy pandas tables.

``load_runs(roots)`` walks result folders and returns a :class:`Results`:

- ``runs``: one row per run (its config's key fields, status and summary numbers);
- ``metrics``: one row per run × evaluation (the ``metrics.jsonl`` rows with the run's
  key fields repeated), the table to use for your own analyses;
- ``problems``: folders that could not be read, with the reason. A missing or corrupt
  file never stops the rest; a run that failed or diverged stays in ``runs`` with its
  status, never silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

RUN_KEYS = ("run", "data", "model", "protocol", "workers", "seed", "status")


@dataclass
class Results:
    """Everything the report reads, as data frames."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    problems: list[tuple[str, str]] = field(default_factory=list)


def _run_folders(roots: Iterable[Path]) -> list[Path]:
    found = set()
    for root in roots:
        for marker in ("config.yaml", "summary.json", "metrics.jsonl"):
            for path in root.rglob(marker):
                if not any(part.startswith(("_", ".")) for part in path.relative_to(root).parts):
                    found.add(path.parent)
    return sorted(found)


def _read_run(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run's key fields and metric rows; raises ValueError naming what is wrong."""
    config_path = folder / "config.yaml"
    if not config_path.exists():
        raise ValueError("config.yaml is missing")
    try:
        config = yaml.safe_load(config_path.read_text())
        proto = config["protocol"]
        model = config["model"]
        run = {
            "run": folder.name,
            "data": config["data"]["name"],
            "model": (
                f"mlp{model['layers']}x{model['hidden']}"
                if model["name"] == "mlp"
                else f"{model['name']}{model['depth']}x{model['width']:g}"
            ),
            "protocol": proto["name"],
            "workers": int(config["workers"]),
            "seed": int(config["seed"]),
            "local_steps": proto.get("local_steps", 1),
        }
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"config.yaml is unreadable ({type(err).__name__}: {err})") from err
    summary_path = folder / "summary.json"
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
        except ValueError as err:
            raise ValueError(f"summary.json is corrupt ({err})") from err
        run["status"] = summary.get("status", "unknown")
        run.update({k: summary.get(k) for k in _SUMMARY_FIELDS})
    else:
        run["status"] = "incomplete"  # no summary: still running, or killed hard
    rows = []
    metrics_path = folder / "metrics.jsonl"
    if metrics_path.exists():
        for n, line in enumerate(metrics_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as err:
                raise ValueError(f"metrics.jsonl line {n} is corrupt ({err})") from err
    return run, rows


_SUMMARY_FIELDS = (
    "final_test_acc",
    "best_test_acc",
    "train_s",
    "compute_s",
    "comm_s",
    "bytes",
    "bytes_moved",
    "steps",
    "rounds",
    "data_epochs",
    "error",
)


def load_runs(roots: str | Path | Iterable[str | Path]) -> Results:
    """Read every run folder under ``roots`` (folders whose names start with _ or . are skipped)."""
    if isinstance(roots, str | Path):
        roots = [roots]
    paths = [Path(r) for r in roots]
    runs, metrics, problems = [], [], []
    for root in paths:
        if not root.exists():
            problems.append((str(root), "results folder does not exist"))
    for folder in _run_folders(p for p in paths if p.exists()):
        try:
            run, rows = _read_run(folder)
        except ValueError as err:
            problems.append((str(folder), str(err)))
            continue
        runs.append(run)
        metrics += [{**{k: run[k] for k in RUN_KEYS}, **row} for row in rows]
    run_df = pd.DataFrame(runs, columns=[*RUN_KEYS, "local_steps", *_SUMMARY_FIELDS])
    metric_df = pd.DataFrame(metrics)
    if not metric_df.empty:
        metric_df = metric_df.sort_values(["run", "step"], kind="stable").reset_index(drop=True)
    run_df = run_df.sort_values(["data", "protocol", "workers", "seed", "run"]).reset_index(
        drop=True
    )
    return Results(run_df, metric_df, problems)
