"""Benchmarks: scripts that measure and record (``python -m suite.bench.<name>``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from suite.record import code_version, cpu_model


def round_floats(value: Any) -> Any:
    """``value`` with every float rounded to 4 significant digits (compact records)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: round_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [round_floats(v) for v in value]
    return value


def size_arguments(parser: argparse.ArgumentParser, quick: str, repeats: int | None) -> None:
    """The options every benchmark with a quick mode shares: ``--repeats`` (when it
    repeats), ``--quick`` (what it shrinks to, said in ``quick``) and ``--out``."""
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", default=None, help="default: results/bench/<name>[-quick]...")


def record_path(args: argparse.Namespace, name: str, suffix: str = "-cpu") -> str:
    """``--out``, else ``results/bench/<name>[-quick]<suffix>.json``."""
    return args.out or f"results/bench/{name}{'-quick' if args.quick else ''}{suffix}.json"


def write_record(
    name: str,
    model: str,
    rows: list[dict[str, Any]],
    out: str,
    argv: list[str] | None,
    load_before: tuple[float, float, float] | None = None,
    **extra: Any,
) -> Path:
    """Save a benchmark's rows with the command, hardware and versions that produced them.

    The load average (before the benchmark, if given, and at the end) tells a reader
    whether something else shared the cores; ``extra`` adds top-level fields."""
    args = sys.argv[1:] if argv is None else argv
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    record = {
        "benchmark": name,
        "command": " ".join(["python -m suite.bench." + name, *args]),
        "model": model,
        "hardware": {"cpu": cpu_model(), "cores": os.cpu_count(), "gpus": gpus},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        **code_version(),
        "load_avg_1_5_15": {
            **({"before": [round(v, 2) for v in load_before]} if load_before else {}),
            "after": [round(v, 2) for v in os.getloadavg()],
        },
        **extra,
        "rows": rows,
    }
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
