"""Launch latency through SLURM: from typing the sweep command to each run's first step.

Runs ``python -m suite.run -m hydra/launcher=slurm`` on the embedded default (one job of
``workers`` tasks per sweep point) and reads back, per run: the command's start, the
job's submit and start times from SLURM accounting, and the wall time of the run's first
training step (``started_unix`` in its summary). Needs a running SLURM with accounting
(``bash .ci/slurm-up`` as root)::

    python -m suite.bench.slurm --points 2 --out results/bench/slurm-cpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from suite.bench import write_record
from suite.record import RunDir
from suite.sweep import OUTCOME


def _sacct_times(job: str) -> tuple[float, float]:
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", job, "--format=Submit,Start"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    submit, start = out.split("|")
    return tuple(dt.datetime.fromisoformat(t).timestamp() for t in (submit, start))  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--points", type=int, default=2, help="sweep points (seeds 0..n-1)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="results/bench/slurm-cpu.json")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-slurm-") as tmp:
        seeds = ",".join(str(s) for s in range(args.points))
        cmd = [sys.executable, "-m", "suite.run", "-m", "hydra/launcher=slurm"]
        cmd += [f"workers={args.workers}", f"seed={seeds}", f"results_dir={tmp}/results"]
        t0 = time.time()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, check=True).stdout
        total = time.time() - t0
        jobs = re.findall(r"^\[submitted\] #(\d+) .* -> job (\S+)$", out, re.M)
        rows: list[dict[str, Any]] = []
        for num, job in jobs:
            (outcome,) = Path(tmp, "results", "_hydra").glob(f"*/{num}/{OUTCOME}")
            summary = RunDir(json.loads(outcome.read_text())["run_dir"]).read_summary() or {}
            submit, start = _sacct_times(job)
            rows.append(
                {
                    "job": job,
                    "status": summary["status"],
                    "command_to_submit_s": round(submit - t0, 2),
                    "submit_to_job_start_s": round(start - submit, 2),
                    "job_start_to_first_step_s": round(summary["started_unix"] - start, 2),
                    "command_to_first_step_s": round(summary["started_unix"] - t0, 2),
                    "train_s": round(summary["train_s"] or 0.0, 2),
                }
            )
    for r in rows:
        print(json.dumps(r))
    print(f"sweep of {len(rows)} runs: {total:.1f} s from command to end")
    path = write_record(
        "slurm",
        "default (pre-act ResNet-101 x1/8, digits)",
        rows,
        args.out,
        argv,
        load_before,
        sweep_total_s=round(total, 2),
        note="SLURM timestamps have 1 s resolution; a 2-CPU node runs one 2-task job at a time",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
