"""Round time of ResIST vs local SGD, side by side, next to the compute ratio their
block counts imply.

Both protocols train the same model (the default pre-act ResNet-101 at width 1/8 on
digits unless overridden) with the same ℓ, batch and budget, alternating runs. Per round
we report the training clock (evaluation excluded) split into compute and communication.
The implied compute ratio is the multiply-accumulates of one ResIST sub-ResNet (shared
layers plus ⌊P/S⌋ or m partitionable blocks) over those of the full network, counted
with forward hooks on the real modules.

    python -m suite.bench.rounds --workers 2 4 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from typing import Any

import torch
from torch import nn

import protocols
from suite.bench import write_record
from suite.config import LaunchConfig, RunConfig, TrainConfig
from suite.data import load_dataset
from suite.launch import execute
from suite.train import build


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass through convolutions and linear layers."""
    total = 0

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_out = (
                module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            )
            total += output.numel() * per_out
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def implied_ratio(cfg: RunConfig, workers: int, min_depth: int) -> float:
    """MACs of a ResIST sub-ResNet over MACs of the full network (one sample)."""
    ds = load_dataset(cfg.data)
    model = build(cfg, ds, torch.device("cpu"))
    x = torch.randn(2, ds.in_channels, ds.image_size, ds.image_size)  # BN needs 2 samples
    full = count_macs(model, x)
    blocks = model.partitionable_blocks()  # type: ignore[operator]
    keep = max(len(blocks) // workers, min_depth)
    for b in blocks[keep:]:
        b.active = False
    return count_macs(model, x) / full


def _config(name: str, workers: int, args: argparse.Namespace, results: str) -> RunConfig:
    values = {"name": name, "local_steps": args.local_steps, "optimizer_state": "reset"}
    if name == "resist":
        values["min_depth"] = args.min_depth
    base = RunConfig(protocol=protocols.parse_config(values))
    return dataclasses.replace(
        base,
        workers=workers,
        train=TrainConfig(data_epochs=args.data_epochs, eval_every=1e9),
        launcher=LaunchConfig(device="cpu", progress=False),
        results_dir=results,
        force=True,
    )


def measure(workers: int, args: argparse.Namespace) -> dict[str, Any]:
    per_round: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name in ("resist", "localsgd"):
                s = execute(_config(name, workers, args, tmp))
                assert s["status"] == "completed", s
                stats = per_round.setdefault(name, {"round_s": [], "compute_s": [], "comm_s": []})
                for key, total in (
                    ("round_s", "train_s"),
                    ("compute_s", "compute_s"),
                    ("comm_s", "comm_s"),
                ):
                    stats[key].append(s[total] / s["rounds"])
                stats["bytes_per_round"] = [s["bytes"] / s["rounds"]]
                stats["rounds"] = [s["rounds"]]
    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in per_round.items()}
    cfg = _config("resist", workers, args, "unused")
    return {
        "workers": workers,
        "local_steps": args.local_steps,
        "min_depth": args.min_depth,
        "resist": med["resist"],
        "localsgd": med["localsgd"],
        "measured_ratio": med["resist"]["round_s"] / med["localsgd"]["round_s"],
        "compute_ratio_measured": med["resist"]["compute_s"] / med["localsgd"]["compute_s"],
        "implied_ratio": implied_ratio(cfg, workers, args.min_depth),
        "all": per_round,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--min-depth", type=int, default=0)
    parser.add_argument("--data-epochs", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/bench/rounds-cpu.json")
    args = parser.parse_args(argv)
    rows = [measure(w, args) for w in args.workers]
    out = write_record(
        "rounds",
        "preact_resnet101 width 0.125, digits 8x8, batch 32 per worker",
        rows,
        args.out,
        argv,
    )
    print(
        "| workers | localsgd round (ms) | resist round (ms) | measured ratio | compute ratio "
        "| implied by blocks | resist MB/round | localsgd MB/round |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {1e3 * r['localsgd']['round_s']:.0f} | "
            f"{1e3 * r['resist']['round_s']:.0f} | {r['measured_ratio']:.2f} | "
            f"{r['compute_ratio_measured']:.2f} | {r['implied_ratio']:.2f} | "
            f"{r['resist']['bytes_per_round'] / 1e6:.1f} | "
            f"{r['localsgd']['bytes_per_round'] / 1e6:.1f} |"
        )
    print(f"recorded in {out}")


if __name__ == "__main__":
    main()
