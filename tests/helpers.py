"""Helpers for tests: tiny configurations and real multi-rank (gloo) execution."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import protocols
from suite.config import DataConfig, LaunchConfig, ModelConfig, RunConfig, TrainConfig
from suite.dist import Comm, Rendezvous, destroy_process_group, init_process_group


def tiny_config(protocol: str = "ddp", workers: int = 2, **overrides: Any) -> RunConfig:
    """A run that takes seconds: ResNet-18 at width 1/16 on digits, a fraction of an epoch."""
    proto_kw = overrides.pop("protocol_kw", {})
    cfg = RunConfig(
        protocol=protocols.parse_config({"name": protocol, **proto_kw}),
        workers=workers,
        model=ModelConfig(depth=18, width=1 / 16),
        data=DataConfig(batch_size=16),
        train=TrainConfig(data_epochs=0.5, eval_every=0.25),
        launcher=LaunchConfig(device="cpu", threads=1, progress=False, timeout_s=120),
    )
    for key, value in overrides.items():
        if isinstance(value, dict):
            value = dataclasses.replace(getattr(cfg, key), **value)
        cfg = dataclasses.replace(cfg, **{key: value})
    return cfg


def _rank_main(
    fn: Callable[..., Any], rank: int, world: int, port: int, out: str, args: tuple[Any, ...]
) -> None:
    torch.set_num_threads(1)
    try:
        init_process_group(Rendezvous(rank, world, "127.0.0.1", port), torch.device("cpu"), 120)
        result = fn(rank, Comm(rank, world, torch.device("cpu")), *args)
        torch.save(result, f"{out}.rank{rank}")
    except BaseException:
        Path(f"{out}.rank{rank}.err").write_text(traceback.format_exc())
        os._exit(1)
    finally:
        destroy_process_group()


def run_ranks(fn: Callable[..., Any], world: int, tmp: Path, *args: Any) -> list[Any]:
    """Run ``fn(rank, comm, *args)`` in ``world`` real gloo processes; return each result."""
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    ctx = mp.get_context("spawn")
    out = str(tmp / f"ranks-{fn.__name__}")
    procs = [
        ctx.Process(target=_rank_main, args=(fn, r, world, store.port, out, args))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    errors = [Path(f"{out}.rank{r}.err") for r in range(world)]
    failed = [e.read_text() for e in errors if e.exists()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not failed, "\n".join(failed)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(f"{out}.rank{r}", weights_only=False) for r in range(world)]
