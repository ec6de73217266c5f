"""Run folders → tidy pandas tables.

``load_runs(roots)`` walks result folders and returns a :class:`Results`:

- ``runs``: one row per run: its status and summary numbers, and **every semantic config
  key** as a column with a dotted name (``optim.lr``, ``protocol.local_steps``,
  ``train.data_epochs``, ...: exactly what enters the run folder's hash, from
  :func:`suite.config.semantic_config`), plus short columns for reading (``data``,
  ``model``, ``protocol``) and ``group``: runs with the same group id have identical
  semantic configs except the seed, and only such runs are ever pooled;
- ``metrics``: one row per run × evaluation (the ``metrics.jsonl`` rows with the run's
  columns repeated), the table to use for your own analyses;
- ``problems``: folders that could not be read, with the reason. A missing or corrupt
  file never stops the rest; a run that failed or diverged stays in ``runs`` with its
  status, never silently dropped;
- ``earlier``: earlier attempts the launcher moved aside (``<run>.old-<time>``, after
  ``force=true`` or a fresh restart), with their status: history, not results, so never
  in ``runs`` (they would count as a second run of the same seed).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from suite.architectures import label_of
from suite.config import flatten_config, semantic_config

#: Short columns of every run (besides the dotted config columns).
RUN_KEYS = ("run", "group", "data", "model", "protocol", "workers", "seed", "status")
#: Config columns that never define a group (the seed is what a group pools over).
NOT_GROUPING = ("seed",)


@dataclass
class Results:
    """Everything the report reads, as data frames."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    problems: list[tuple[str, str]] = field(default_factory=list)
    earlier: list[tuple[str, str]] = field(default_factory=list)

    @property
    def config_columns(self) -> list[str]:
        """The dotted semantic config columns of ``runs``."""
        return config_columns(self.runs)


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The semantic config columns of a runs (or metrics) frame, in a stable order."""
    return [c for c in frame.columns if c.startswith(CONFIG_PREFIXES) or c in TOP_LEVEL]


CONFIG_PREFIXES = ("protocol.", "model.", "data.", "optim.", "train.")
TOP_LEVEL = ("workers", "seed", "device", "link", "backend")


def model_tag(model: dict[str, Any]) -> str:
    """A short readable model name, the model's own label: ``preact_resnet101x0.125``,
    ``mlp2x1024`` (``suite.architectures``)."""
    return label_of(model)


def group_id(config: dict[str, Any]) -> str:
    """A short id of everything in a flattened semantic config but the seed."""
    key = {k: v for k, v in config.items() if k not in NOT_GROUPING}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]


#: The name ``RunDir.prepare`` gives an earlier attempt it moves aside.
EARLIER_ATTEMPT = re.compile(r"\.old-\d{8}-\d{6}$")


def _attempt_status(folder: Path) -> str:
    """An earlier attempt's status, as its summary says (it is listed, never pooled)."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return "incomplete"
    return str(summary.get("status", "unknown")) if isinstance(summary, dict) else "unknown"


def _run_folders(roots: Iterable[Path]) -> list[Path]:
    found = set()
    for root in roots:
        for marker in ("config.yaml", "summary.json", "metrics.jsonl"):
            for path in root.rglob(marker):
                if not any(part.startswith(("_", ".")) for part in path.relative_to(root).parts):
                    found.add(path.parent)
    return sorted(found)


def _read_run(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run's columns and metric rows; raises ValueError naming what is wrong."""
    config_path = folder / "config.yaml"
    if not config_path.exists():
        raise ValueError("config.yaml is missing")
    try:
        config = yaml.safe_load(config_path.read_text())
        semantic = flatten_config(semantic_config(config))
        run = {
            "run": folder.name,
            "group": group_id(semantic),
            "data": config["data"]["name"],
            "model": model_tag(config["model"]),
            "protocol": config["protocol"]["name"],
            "workers": int(config["workers"]),
            "seed": int(config["seed"]),
            **{k: v for k, v in semantic.items() if k not in ("workers", "seed")},
        }
    except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"config.yaml is unreadable ({type(err).__name__}: {err})") from err
    summary_path = folder / "summary.json"
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
        except ValueError as err:
            raise ValueError(f"summary.json is corrupt ({err})") from err
        if not isinstance(summary, dict):
            raise ValueError(f"summary.json is not a JSON object ({_json_kind(summary)})")
        run["status"] = summary.get("status", "unknown")
        run.update({k: summary.get(k) for k in _SUMMARY_FIELDS})
    else:
        run["status"] = "incomplete"  # no summary: still running, or killed hard
    run.update(_environment(folder))
    rows, torn = _read_metrics(folder / "metrics.jsonl")
    if torn:
        run["torn"] = torn  # a note for problems; popped before the tables
    return run, rows


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], str]:
    """The metric rows, and a note if the last line was torn (a write cut short by a
    crash: ignored, the run kept); any other bad line is an error (ValueError)."""
    if not path.exists():
        return [], ""
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    rows: list[dict[str, Any]] = []
    for n, line in lines:
        try:
            row = json.loads(line)
        except ValueError as err:
            if n == lines[-1][0]:
                return (
                    rows,
                    f"metrics.jsonl line {n} (the last) is torn and was ignored; the run is kept",
                )
            raise ValueError(f"metrics.jsonl line {n} is corrupt ({err})") from err
        if not isinstance(row, dict):
            raise ValueError(f"metrics.jsonl line {n} is not a JSON object ({_json_kind(row)})")
        rows.append(row)
    return rows, ""


def _json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words: null, list, number, string, true/false."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, list | str):
        return "list" if isinstance(value, list) else "string"
    return "number"


#: Where a run executed (from its env.json; for captions, never for grouping).
ENV_FIELDS = ("env.cpu", "env.cpu_count", "env.gpus", "env.threads_per_worker")


def _environment(folder: Path) -> dict[str, Any]:
    """The machine a run executed on, from ``env.json`` (missing or unreadable: none)."""
    try:
        env = json.loads((folder / "env.json").read_text())
        gpus = env.get("gpus") or []
        return {
            "env.cpu": env.get("cpu"),
            "env.cpu_count": env.get("cpu_count"),
            "env.gpus": ", ".join(gpus) if isinstance(gpus, list) else str(gpus),
            "env.threads_per_worker": env.get("threads_per_worker"),
        }
    except (OSError, ValueError, AttributeError):
        return {}


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
    runs: list[dict[str, Any]] = []
    problems: list[tuple[str, str]] = []
    rows: list[tuple[str, list[dict[str, Any]]]] = []
    for root in paths:
        if not root.exists():
            problems.append((str(root), "results folder does not exist"))
    earlier: list[tuple[str, str]] = []
    for folder in _run_folders(p for p in paths if p.exists()):
        if EARLIER_ATTEMPT.search(folder.name):
            earlier.append((str(folder), _attempt_status(folder)))
            continue
        try:
            run, metric_rows = _read_run(folder)
        except ValueError as err:
            problems.append((str(folder), str(err)))
            continue
        if "torn" in run:
            problems.append((str(folder), run.pop("torn")))
        seen = sum(r["run"].split(" [")[0] == run["run"] for r in runs)
        if seen:  # the same folder name under two roots: keep both, told apart
            run["run"] = f"{run['run']} [{seen + 1}]"
        runs.append(run)
        rows.append((run["run"], metric_rows))
    configs = sorted({k for r in runs for k in r if k.startswith(CONFIG_PREFIXES)})
    configs += [k for k in ("device", "link", "backend") if any(k in r for r in runs)]
    columns = [*RUN_KEYS, *_SUMMARY_FIELDS, *ENV_FIELDS, *configs]
    run_df = pd.DataFrame(runs, columns=columns)
    run_df = run_df.sort_values(["data", "protocol", "workers", "seed", "run"]).reset_index(
        drop=True
    )
    by_run = {r["run"]: r for r in runs}
    metrics = [
        {**{k: by_run[name].get(k) for k in (*RUN_KEYS, *configs)}, **row}
        for name, metric_rows in rows
        for row in metric_rows
    ]
    metric_df = pd.DataFrame(metrics)
    if not metric_df.empty:
        metric_df = metric_df.sort_values(["run", "step"], kind="stable").reset_index(drop=True)
    return Results(run_df, metric_df, problems, earlier)
