"""Step throughput of the default model in fp32, bf16 autocast and channels-last, on CPU.

One process, the default model (pre-act ResNet-101 at width 1/8 on digits, 8×8 inputs,
batch 32, the suite's augmentation), a full training step each time (forward, loss,
backward, SGD with momentum). Variants alternate within each repeat; the median ms/step
is kept. ``threads`` 1 is what each worker of a 2-worker run gets on this 2-core machine.
Also reported: the largest relative difference of the first step's loss from fp32 (a
sanity check that the variant computes the same thing, not an accuracy study).

    python -m suite.bench.precision                    # threads 1 and 2, 3 repeats
    python -m suite.bench.precision --quick            # < 60 s
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from suite.bench import record_path, size_arguments, write_record
from suite.config import RunConfig
from suite.data import TrainBatches, load_dataset
from suite.problem import build
from suite.train import make_optimizer_factory

VARIANTS = {  # name: (bf16 autocast, channels_last)
    "fp32": (False, False),
    "bf16 autocast": (True, False),
    "channels_last": (False, True),
    "bf16 + channels_last": (True, True),
}


def time_variant(name: str, steps: int, warmup: int = 3) -> tuple[float, float]:
    """Seconds per training step of the default model under ``name``; and the first loss."""
    bf16, channels_last = VARIANTS[name]
    cfg = RunConfig()
    ds = load_dataset(cfg.data)
    model = build(cfg, ds, torch.device("cpu"))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    # Module.to takes memory_format; torch's type stubs do not list it.
    model = model.to(memory_format=fmt)  # type: ignore[call-overload]
    opt = make_optimizer_factory(cfg.optim)(model.parameters())
    batches = TrainBatches(
        ds, 0, 1, cfg.data.batch_size, "disjoint", 0, torch.device("cpu"), cfg.data.augment
    )
    first = None
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        x, y = next(batches)
        x = x.contiguous(memory_format=fmt)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if first is None:
            first = float(loss.detach())
    return (time.perf_counter() - start) / steps, float(first or 0.0)


def measure(threads: int, steps: int, repeats: int) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {n: [] for n in VARIANTS}
    losses: dict[str, float] = {}
    for _ in range(repeats):
        for name in VARIANTS:
            seconds, loss = time_variant(name, steps)
            times[name].append(seconds)
            losses[name] = loss
    base = statistics.median(times["fp32"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(
            {
                "threads": threads,
                "variant": name,
                "step_ms": round(1e3 * med, 2),
                "images_per_s": round(32 / med, 1),
                "speedup_vs_fp32": round(base / med, 3),
                "first_loss_rel_diff": round(abs(losses[name] / losses["fp32"] - 1), 4),
                "all_ms": [round(1e3 * t, 2) for t in ts],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=40)
    size_arguments(parser, "10 steps, 1 repeat (< 60 s)", repeats=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 10, 1
    out = record_path(args, "precision")
    load = os.getloadavg()
    rows = [r for t in args.threads for r in measure(t, args.steps, args.repeats)]
    path = write_record(
        "precision",
        "preact_resnet101 width 0.125, digits 8x8, batch 32, one process",
        rows,
        out,
        argv,
        load_before=load,
        cpu_flags=_bf16_flags(),
    )
    print("| threads | variant | ms/step | images/s | vs fp32 | first-loss rel. diff |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['threads']} | {r['variant']} | {r['step_ms']:.1f} | {r['images_per_s']:.0f} "
            f"| {r['speedup_vs_fp32']:.2f}× | {r['first_loss_rel_diff']:.4f} |"
        )
    print(f"recorded in {path}")


def _bf16_flags() -> list[str]:
    """The CPU's bf16-relevant instruction-set flags (native bf16 decides the outcome)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    wanted = ("avx512_bf16", "amx_bf16", "avx512f", "avx2")
    return sorted({w for w in wanted if f" {w}" in text})


if __name__ == "__main__":
    main()
