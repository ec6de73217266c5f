"""The suite's training step vs a bare PyTorch loop, side by side in one run.

Same model (the default pre-act ResNet-101 at width 1/8), same data (digits, on the
device, same random-crop augmentation), same per-worker batch, same process count and
threads. The bare loop is what a researcher would write by hand: torch's
``DistributedDataParallel`` (bucketed all-reduce overlapped with backward) for several
workers, a plain loop for one. The suite's numbers are its own training clock
(``train_s`` / steps, evaluation excluded) from a real ``execute`` of ``ddp`` / ``single``.
Runs alternate (bare, suite, bare, suite, ...) and the median per-step time is kept.

    python -m suite.bench.overhead --workers 1 2 --steps 150 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import protocols
from suite.bench import write_record
from suite.config import LaunchConfig, RunConfig, TrainConfig
from suite.data import augment, load_dataset
from suite.data.loader import Normalizer
from suite.dist import Comm, run_ranks
from suite.launch import execute
from suite.train import build, make_optimizer_factory


def _bare_loop(rank: int, comm: Comm, cfg: RunConfig, steps: int) -> float:
    ds = load_dataset(cfg.data)
    device = torch.device("cpu")
    model = build(cfg, ds, device)
    net = DistributedDataParallel(model) if comm.world_size > 1 else model
    opt = make_optimizer_factory(cfg.optim)(net.parameters())
    images, labels, norm = ds.train_x, ds.train_y, Normalizer(ds, device)
    gen = torch.Generator().manual_seed(rank)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (cfg.data.batch_size,), generator=gen)
        x = norm(augment(images[idx], ds.crop_padding, ds.flip, gen))
        loss = F.cross_entropy(net(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def _config(workers: int, steps: int, results: str) -> RunConfig:
    base = RunConfig(protocol=protocols.parse_config({"name": "ddp" if workers > 1 else "single"}))
    epochs = steps * base.data.batch_size * workers / load_dataset(base.data).num_train
    return dataclasses.replace(
        base,
        workers=workers,
        train=TrainConfig(data_epochs=epochs * (1 - 1e-9), eval_every=1e9),
        launcher=LaunchConfig(device="cpu", progress=False),
        results_dir=results,
        force=True,
    )


def measure(workers: int, steps: int, repeats: int) -> dict[str, Any]:
    """Median seconds per step of the bare loop and of the suite, alternating."""
    bare, suite = [], []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(workers, steps, tmp)
        threads = max(1, (torch.get_num_threads() or 1) // workers)
        for _ in range(repeats):
            times = run_ranks(_bare_loop, workers, Path(tmp), cfg, steps, threads=threads)
            bare.append(max(times) / steps)
            summary = execute(cfg)
            assert summary["status"] == "completed" and summary["steps"] == steps, summary
            suite.append(summary["train_s"] / steps)
    b, s = statistics.median(bare), statistics.median(suite)
    images = cfg.data.batch_size * workers
    return {
        "workers": workers,
        "protocol": cfg.protocol_name,
        "steps": steps,
        "repeats": repeats,
        "bare_step_s": b,
        "suite_step_s": s,
        "bare_images_per_s": images / b,
        "suite_images_per_s": images / s,
        "overhead_pct": 100 * (s / b - 1),
        "bare_all": bare,
        "suite_all": suite,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/bench/overhead-cpu.json")
    args = parser.parse_args(argv)
    rows = [measure(w, args.steps, args.repeats) for w in args.workers]
    out = write_record(
        "overhead",
        "preact_resnet101 width 0.125, digits 8x8, batch 32 per worker",
        rows,
        args.out,
        argv,
    )
    print(
        "| workers | protocol | bare step (ms) | suite step (ms) | bare img/s | suite img/s "
        "| overhead |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['protocol']} | {1e3 * r['bare_step_s']:.1f} | "
            f"{1e3 * r['suite_step_s']:.1f} | {r['bare_images_per_s']:.0f} | "
            f"{r['suite_images_per_s']:.0f} | {r['overhead_pct']:+.1f}% |"
        )
    print(f"recorded in {out}")


if __name__ == "__main__":
    main()
