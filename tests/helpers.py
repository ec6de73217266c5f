"""Helpers for tests: tiny configurations and real multi-rank (gloo) execution.

``tiny_config`` builds a run directly (ResNet-18 at width 1/16 on digits, whatever the
protocol), for tests that fix the model; the contract kit's ``suite.testing.kit_config``
composes one as the command line would and picks a model the protocol supports. Ranks
train through the kit's own ``train_rank``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import protocols
from protocols.base import ProblemInfo
from suite.architectures import PreActResNetConfig
from suite.config import LaunchConfig, RunConfig, TrainConfig, with_part
from suite.datasources import data_config
from suite.spawn import run_ranks
from suite.testing import train_rank  # the contract kit's: one rank trains, for run_ranks

__all__ = ["problem", "run_ranks", "set_up", "shipped_protocols", "tiny_config", "train_rank"]


def tiny_config(protocol: str = "ddp", workers: int = 2, **overrides: Any) -> RunConfig:
    """A run that takes seconds: ResNet-18 at width 1/16 on digits, a fraction of an epoch."""
    proto_kw = overrides.pop("protocol_kw", {})
    cfg = RunConfig(
        protocol=protocols.parse_config({"name": protocol, **proto_kw}),
        workers=workers,
        model=PreActResNetConfig(depth=18, width=1 / 16),
        data=data_config(batch_size=16),
        train=TrainConfig(data_epochs=0.5, eval_every=0.25),
        launcher=LaunchConfig(device="cpu", threads=1, progress=False, timeout_s=120),
    )
    for key, value in overrides.items():
        if isinstance(value, dict):
            cfg = with_part(cfg, key, value)  # a section: a component's name switches it
        else:
            cfg = dataclasses.replace(cfg, **{key: value})
    return cfg


def problem(
    model: Any, batch_size: int = 16, num_train: int = 1437, image_size: int = 32, seed: int = 0
) -> ProblemInfo:
    """What a protocol is told about a digits-like problem (defaults: digits, batch 16)."""
    shape = (1, image_size, image_size)
    return ProblemInfo(model, "digits", num_train, batch_size, "disjoint", seed, shape)


def set_up(proto: Any, model: Any, comm: Any, info: ProblemInfo | None = None) -> None:
    """``proto.setup`` with the tiny config's optimizer (and ``problem(model)`` by default)."""
    from suite.train import make_optimizer_factory

    proto.setup(model, comm, make_optimizer_factory(tiny_config().optim), info or problem(model))


def shipped_protocols() -> list[str]:
    """Registered protocols that ship in ``protocols/`` (tests may register their own)."""
    registry = protocols.load_all()
    return sorted(n for n, c in registry.items() if c.__module__.startswith("protocols."))


def train_checkpointed(
    rank: int, comm: Any, cfg: RunConfig, run_path: str, stop_after: int | None = None
) -> dict[str, Any]:
    """For ``run_ranks``: train with checkpoints in ``run_path`` (resuming from one there);
    rank 0 alone asks to stop at its ``stop_after``-th round end (as a scheduler signal would)."""
    import torch

    from suite.checkpoint import Checkpoints
    from suite.record import RunDir
    from suite.train import Preempted, train

    asked = [0]

    def stop() -> bool:
        asked[0] += 1
        return rank == 0 and stop_after is not None and asked[0] >= stop_after

    record = RunDir(run_path) if rank == 0 else None
    try:
        result = train(cfg, comm, torch.device("cpu"), record, Checkpoints(run_path, rank), stop)
    except Preempted as stopped:
        return {"preempted": str(stopped)}
    return {"summary": result.summary}


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """``python -m suite.run *args`` as a user types it: exit status and all it printed."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "suite.run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr
