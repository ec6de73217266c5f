"""The cost of one checkpoint of the paper's full-width model, per rank, on this machine.

What one rank writes at a checkpoint (``suite.train``: model, protocol state with its
optimizer, data position, loop state, RNG) for the full pre-act ResNet-101 of the CIFAR
presets (41.4 M parameters), written as the run writes it (``Checkpoints.save``: a
temporary file, fsync, atomic rename), timed over repeats; and the commit (rank 0).

    python -m suite.bench.checkpoint                  # localsgd and resist, 3 repeats
    python -m suite.bench.checkpoint --quick          # width 1/8, 1 repeat
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import torch

from suite.bench import record_path, size_arguments, write_record
from suite.checkpoint import Checkpoints
from suite.dist import Comm
from suite.problem import build_protocol, load_problem, parse_run_config
from suite.sweep import compose
from suite.train import LoopState, make_optimizer_factory

CPU = torch.device("cpu")


def snapshot(preset: str, width: float) -> dict[str, Any]:
    """Rank 0's checkpoint state of a paper preset after one round, taken where the loop
    takes it: after the round's aggregation (synthetic CIFAR-shaped data: the sizes are
    the model's, not the data's)."""
    values = compose(
        (
            f"+experiment={preset}",
            "workers=2",
            "data=synthetic",
            "data.num_train=256",
            "data.num_test=16",
            f"model.width={width}",
        )
    )
    cfg = parse_run_config(values)
    problem = load_problem(cfg, CPU)
    protocol = build_protocol(cfg)
    protocol.setup(problem.model, Comm(0, 1, CPU), make_optimizer_factory(cfg.optim), problem.info)
    work = protocol.begin_round(0)
    x = torch.randn(8, *problem.info.input_shape)
    y = torch.randint(0, 10, (8,))
    work.optimizer.zero_grad()
    work.loss(x, y).backward()
    work.optimizer.step()  # the optimizer now has its state (momentum buffers)
    protocol.end_round(0, work)  # what survives a round (optimizer_state=reset: nothing)
    return {
        "model": problem.model.state_dict(),
        "protocol": protocol.state_dict(),
        "batches": {"epoch": 0, "position": 0, "aug": torch.Generator().get_state()},
        "loop": LoopState().__dict__,
        "loss_sum": torch.zeros(()),
        "comm": {},
        "rng": torch.get_rng_state(),
    }


def measure(preset: str, width: float, repeats: int) -> dict[str, Any]:
    state = snapshot(preset, width)
    params = sum(t.numel() for t in state["model"].values() if t.is_floating_point())
    seconds, commits, size = [], [], 0
    with tempfile.TemporaryDirectory(dir=".") as tmp:  # on the disk results go to
        ckpt = Checkpoints(tmp, 0)
        for step in range(1, repeats + 1):
            start = time.perf_counter()
            ckpt.save(step, state)
            seconds.append(time.perf_counter() - start)
            size = (ckpt.folder / f"rank0-step{step}.pt").stat().st_size
            start = time.perf_counter()
            ckpt.commit(step, 2)
            commits.append(time.perf_counter() - start)
    return {
        "preset": preset,
        "width": width,
        "parameters": params,
        "bytes_per_rank": size,
        "seconds_per_rank": statistics.median(seconds),
        "seconds_all": [round(s, 3) for s in seconds],
        "commit_seconds": statistics.median(commits),
        "MB_per_s": size / 1e6 / statistics.median(seconds),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["localsgd_cifar", "resist_cifar"])
    size_arguments(parser, "width 1/8, one repeat", repeats=3)
    args = parser.parse_args(argv)
    width = 0.125 if args.quick else 1.0
    repeats = 1 if args.quick else args.repeats
    out = record_path(args, "checkpoint")
    load = os.getloadavg()
    rows = [measure(p, width, repeats) for p in args.presets]
    path = write_record(
        "checkpoint",
        f"pre-act ResNet-101 width {width} (CIFAR presets), one rank's checkpoint",
        rows,
        out,
        argv,
        load_before=load,
    )
    print("| preset | parameters | MB per rank | s per rank | MB/s | commit (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['parameters'] / 1e6:.1f} M | {r['bytes_per_rank'] / 1e6:.0f} | "
            f"{r['seconds_per_rank']:.2f} | {r['MB_per_s']:.0f} | {r['commit_seconds']:.4f} |"
        )
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
