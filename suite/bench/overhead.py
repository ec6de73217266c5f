"""The suite's training step vs a bare PyTorch loop, per protocol, side by side in one run.

Same model (the default pre-act ResNet-101 at width 1/8; ist: its 2-layer MLP), same
data (digits, on the device, same random-crop augmentation), same per-worker batch,
same process count and threads. The bare loops are what a researcher would write by hand:

- ``ddp``: torch's ``DistributedDataParallel`` (bucketed all-reduce overlapped with
  backward); ``single`` (one worker): a plain loop;
- ``localsgd``: a plain model and optimizer, parameters and BN buffers averaged with one
  flat ``all_reduce`` every ℓ steps;
- ``resist``, ``ist``: the same protocol object's hooks (begin_round, loss, backward,
  after_backward, step, end_round) driven by a minimal loop without the suite's
  machinery (learning-rate schedule, loss accounting, clock, metrics, checkpoints).

The suite's numbers are its own training clock (``train_s`` / steps, evaluation
excluded) from a real ``execute``, with its defaults (channels-last memory layout for
image models) and with ``train.channels_last=false`` (the layout a bare loop has by
hand). Runs alternate (bare, suite, suite off, bare, ...) per protocol and the median
per-step time is kept.

    python -m suite.bench.overhead --workers 2 --protocols ddp localsgd resist ist
    python -m suite.bench.overhead --quick        # < 60 s: fewer steps, one repeat
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import protocols
from protocols.base import float_state
from suite.architectures import MLPConfig, PreActResNetConfig
from suite.bench import record_path, size_arguments, write_record
from suite.config import LaunchConfig, RunConfig, TrainConfig
from suite.data import augment, load_dataset
from suite.data.loader import Normalizer
from suite.dist import Comm, flatten, unflatten_into
from suite.launch import execute, threads_per_worker
from suite.problem import build, problem_info
from suite.spawn import run_ranks
from suite.train import make_optimizer_factory


class _Batches:
    """Random batches with the suite's augmentation and normalisation, no sharding logic."""

    def __init__(self, cfg: RunConfig, rank: int) -> None:
        self.ds = load_dataset(cfg.data)
        self.norm = Normalizer(self.ds, torch.device("cpu"))
        self.gen = torch.Generator().manual_seed(rank)
        self.batch = cfg.data.batch_size

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        ds = self.ds
        idx = torch.randint(0, len(ds.train_y), (self.batch,), generator=self.gen)
        return self.norm(augment(ds.train_x[idx], ds.crop_padding, ds.flip, self.gen)), ds.train_y[
            idx
        ]


def _bare_ddp(rank: int, comm: Comm, cfg: RunConfig, steps: int) -> float:
    batches = _Batches(cfg, rank)
    model = build(cfg, batches.ds, torch.device("cpu"))
    net = DistributedDataParallel(model) if comm.world_size > 1 else model
    opt = make_optimizer_factory(cfg.optim)(net.parameters())
    start = time.perf_counter()
    for _ in range(steps):
        x, y = batches()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def _bare_localsgd(rank: int, comm: Comm, cfg: RunConfig, steps: int) -> float:
    batches = _Batches(cfg, rank)
    model = build(cfg, batches.ds, torch.device("cpu"))
    opt = make_optimizer_factory(cfg.optim)(model.parameters())
    tensors, every = float_state(model), cfg.protocol.local_steps
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = batches()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            with torch.no_grad():
                flat = flatten(tensors)
                dist.all_reduce(flat)
                unflatten_into(flat.div_(comm.world_size), tensors)
    return time.perf_counter() - start


def _bare_hooks(rank: int, comm: Comm, cfg: RunConfig, steps: int) -> float:
    batches = _Batches(cfg, rank)
    model = build(cfg, batches.ds, torch.device("cpu"))
    protocol = protocols.build(cfg.protocol)
    info = problem_info(cfg, batches.ds, model)
    protocol.setup(model, comm, make_optimizer_factory(cfg.optim), info)
    step, rnd = 0, 0
    start = time.perf_counter()
    while step < steps:
        work = protocol.begin_round(rnd)
        for _ in range(min(protocol.local_steps, steps - step)):
            x, y = batches()
            loss = work.loss(x, y)
            work.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            protocol.after_backward(work)
            work.optimizer.step()
            step += 1
        protocol.end_round(rnd, work)
        rnd += 1
    return time.perf_counter() - start


#: Hand-written loops for the protocols one is easy to write for; every other protocol
#: (resist, ist, diloco, powersgd, plugins) runs its own hooks in a minimal loop.
BARE: dict[str, Callable[[int, Comm, RunConfig, int], float]] = {
    "single": _bare_ddp,
    "ddp": _bare_ddp,
    "localsgd": _bare_localsgd,
}

BARE_NAMES = {
    "single": "plain loop",
    "ddp": "torch DDP",
    "localsgd": "plain loop + flat all-reduce every ℓ",
}


def _config(protocol: str, workers: int, steps: int, results: str) -> RunConfig:
    name = protocol if workers > 1 else "single"
    family = protocols.get(name).selects.get("model", "preact_resnet")
    model = MLPConfig() if family == "mlp" else PreActResNetConfig()
    base = RunConfig(protocol=protocols.parse_config({"name": name}), model=model)
    epochs = steps * base.data.batch_size * workers / load_dataset(base.data).num_train
    return dataclasses.replace(
        base,
        workers=workers,
        train=TrainConfig(data_epochs=epochs * (1 - 1e-9), eval_every=1e9, checkpoint=False),
        launcher=LaunchConfig(device="cpu", progress=False),
        results_dir=results,
        force=True,
    )


def measure(protocols_: list[str], workers: int, steps: int, repeats: int) -> list[dict[str, Any]]:
    """Median seconds per step of each bare loop and of the suite, alternating."""
    names = protocols_ if workers > 1 else ["single"]
    bare: dict[str, list[float]] = {n: [] for n in names}
    suite: dict[str, list[float]] = {n: [] for n in names}
    suite_off: dict[str, list[float]] = {n: [] for n in names}
    threads = threads_per_worker(_config(names[0], workers, steps, ""))  # as the launcher
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            for name in names:
                cfg = _config(name, workers, steps, tmp)
                off = dataclasses.replace(
                    cfg, train=dataclasses.replace(cfg.train, channels_last=False)
                )
                fn = BARE.get(cfg.protocol_name, _bare_hooks)
                times = run_ranks(fn, workers, Path(tmp), off, steps, threads=threads)
                bare[name].append(max(times) / steps)
                for config, into in ((cfg, suite), (off, suite_off)):
                    summary = execute(config)
                    assert summary["status"] == "completed", summary
                    assert summary["steps"] == steps, summary
                    into[name].append((summary["train_s"] or 0.0) / steps)
    rows = []
    for name in names:
        b, s = statistics.median(bare[name]), statistics.median(suite[name])
        rows.append(
            {
                "workers": workers,
                "protocol": name,
                "bare": BARE_NAMES.get(name, "protocol hooks, minimal loop"),
                "steps": steps,
                "repeats": repeats,
                "bare_step_ms": round(1e3 * b, 2),
                "suite_step_ms": round(1e3 * s, 2),
                "suite_channels_last_off_step_ms": round(
                    1e3 * statistics.median(suite_off[name]), 2
                ),
                "default_over_off": round(s / statistics.median(suite_off[name]), 4),
                "ratio": round(s / b, 4),
                "overhead_pct": round(100 * (s / b - 1), 2),
                # each suite run over the bare run just before it: drifts in what else
                # runs on the machine cancel within a pair
                "paired_ratio_median": round(
                    statistics.median(x / y for x, y in zip(suite[name], bare[name], strict=True)),
                    4,
                ),
                "bare_all_ms": [round(1e3 * v, 2) for v in bare[name]],
                "suite_all_ms": [round(1e3 * v, 2) for v in suite[name]],
                "suite_off_all_ms": [round(1e3 * v, 2) for v in suite_off[name]],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--protocols", nargs="+", default=["ddp", "localsgd", "resist", "ist"])
    parser.add_argument("--steps", type=int, default=150)
    size_arguments(parser, "30 steps, 1 repeat (< 60 s)", repeats=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 30, 1
        args.protocols = [p for p in args.protocols if p in ("ddp", "localsgd", "resist")]
    out = record_path(args, "overhead")
    load = os.getloadavg()
    rows = [r for w in args.workers for r in measure(args.protocols, w, args.steps, args.repeats)]
    path = write_record(
        "overhead",
        "preact_resnet101 width 0.125 (ist: mlp2x1024), digits 8x8, batch 32 per worker",
        rows,
        out,
        argv,
        load_before=load,
    )
    print(
        "| workers | protocol | bare loop | bare (ms/step) | suite (ms/step) | suite / bare "
        "| paired ratio | suite, channels-last off (ms/step) | default / off |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['protocol']} | {r['bare']} | {r['bare_step_ms']:.1f} | "
            f"{r['suite_step_ms']:.1f} | {r['ratio']:.3f} ({r['overhead_pct']:+.1f} %) | "
            f"{r['paired_ratio_median']:.3f} | {r['suite_channels_last_off_step_ms']:.1f} | "
            f"{r['default_over_off']:.3f} |"
        )
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
