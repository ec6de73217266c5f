"""Where a round's time goes, per protocol: the PyTorch profiler over real runs.

Each protocol trains in the suite's own loop on real ranks, under ``torch.profiler``; the
loop labels its phases (``record_function``): the batch and its augmentation
(``step.data``), forward, backward, what the protocol does after backward (ddp's
gradient all-reduce, a compressor), the optimizer step, and the round's start and end
(ResIST's and local SGD's synchronisation). What the training clock holds beyond the
labelled phases is the loop's own Python (schedule, counters, heartbeat) and the
profiler's cost. Rank 0's figures, per round, averaged over the run's rounds.

    python -m suite.bench.profile --protocols resist localsgd ddp --local-steps 50 \\
        --data-epochs 2 --set data=synthetic data.num_train=12800 data.num_classes=100 \\
        data.batch_size=128 launcher.threads=1
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from suite.bench import write_record
from suite.bench.rounds import _config
from suite.config import RunConfig
from suite.dist import Comm
from suite.spawn import run_ranks

PHASES = (
    "step.data",
    "step.forward",
    "step.backward",
    "step.after_backward",
    "step.optimizer",
    "round.begin",
    "round.end",
)


def profiled_rank(rank: int, comm: Comm, cfg: RunConfig) -> dict[str, Any]:
    """For ``run_ranks``: train ``cfg`` under the profiler; seconds per labelled phase."""
    from suite.train import train

    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        result = train(cfg, comm, torch.device("cpu"))
    totals = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key in PHASES}
    return {"summary": result.summary, "phases": totals}


def profile(name: str, args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """One profiled run of protocol ``name``: its phases per round, in ms."""
    cfg = _config(name, args.workers, args, tmp)
    out = run_ranks(profiled_rank, args.workers, Path(tmp), cfg, threads=cfg.launcher.threads or 1)
    summary, phases = out[0]["summary"], out[0]["phases"]
    assert summary["status"] == "completed", summary
    rounds = summary["rounds"]
    per_round = {p: 1000 * phases.get(p, 0.0) / rounds for p in PHASES}
    train_ms = 1000 * summary["train_s"] / rounds
    return {
        "protocol": name,
        "rounds": rounds,
        "steps_per_round": summary["steps"] / rounds,
        "round_ms": train_ms,
        **{f"{p}_ms": v for p, v in per_round.items()},
        "unlabelled_ms": train_ms - sum(per_round.values()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--protocols", nargs="+", default=["resist", "localsgd", "ddp"])
    parser.add_argument("--model", choices=["preact_resnet", "mlp"], default="preact_resnet")
    parser.add_argument("--hidden", type=int, default=4096, help="MLP width (--model mlp)")
    parser.add_argument("--local-steps", type=int, default=50)
    parser.add_argument("--min-depth", type=int, default=0)
    parser.add_argument("--data-epochs", type=float, default=2.0)
    parser.add_argument("--eval-every", type=float, default=1e9, help="data-epochs")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="results/bench/profile-cpu.json")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [profile(name, args, tmp) for name in args.protocols]
    cfg = _config(args.protocols[0], args.workers, args, "unused")
    work = (
        f"{cfg.model.label()}, {cfg.data.name}, batch {cfg.data.batch_size} per worker, "
        f"{args.workers} workers, overrides {' '.join(args.set) or 'none'}"
    )
    out = write_record("profile", work, rows, args.out, argv, load_before=load)
    columns = ["round_ms", *(f"{p}_ms" for p in PHASES), "unlabelled_ms"]
    print("| protocol | " + " | ".join(c.removesuffix("_ms") for c in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row in rows:
        cells = " | ".join(f"{row[c]:.0f}" for c in columns)
        print(f"| {row['protocol']} | {cells} |")
    print(f"recorded in {out}")


if __name__ == "__main__":
    main()
