"""Round time and bytes per round of protocols side by side, in one alternating run.

Every protocol trains the same model with the same ℓ, batch and budget; runs alternate
across protocols and the medians of the repeats are kept. Per round: the training clock
(evaluation excluded) split into compute and communication, and the bytes (paper
convention and actually moved). For ResIST vs local SGD it also gives the compute ratio
their block counts imply: the multiply-accumulates of one sub-ResNet (shared layers plus
⌊P/S⌋ or m partitionable blocks) over the full network's, counted with forward hooks.

    python -m suite.bench.rounds --workers 2 4 --repeats 3             # resist vs localsgd
    python -m suite.bench.rounds --model mlp --protocols ist localsgd ddp \
        --out results/bench/rounds-ist-cpu.json                          # the 2-layer MLP
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from typing import Any

import torch

import protocols
from suite.bench import write_record
from suite.config import LaunchConfig, ModelConfig, RunConfig, TrainConfig
from suite.data import load_dataset
from suite.launch import execute
from suite.models.flops import count_macs
from suite.train import build


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
    values: dict[str, Any] = {"name": name}
    if name in ("localsgd", "resist", "ist"):
        values["local_steps"] = args.local_steps
    if name in ("localsgd", "resist"):
        values["optimizer_state"] = "reset"
    if name == "resist":
        values["min_depth"] = args.min_depth
    model = ModelConfig()
    if args.model == "mlp":
        model = ModelConfig(name="mlp", hidden=args.hidden, layers=2, variant="ist")
    return dataclasses.replace(
        RunConfig(protocol=protocols.parse_config(values)),
        workers=workers,
        model=model,
        train=TrainConfig(data_epochs=args.data_epochs, eval_every=1e9),
        launcher=LaunchConfig(device="cpu", progress=False),
        results_dir=results,
        force=True,
    )


def measure(workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """Median per-round figures of each protocol, runs alternating across protocols."""
    per_round: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name in args.protocols:
                s = execute(_config(name, workers, args, tmp))
                assert s["status"] == "completed", s
                stats = per_round.setdefault(name, {})
                rounds, steps = s["rounds"], s["steps"]
                for key, value in (
                    ("round_s", s["train_s"] / rounds),
                    ("step_s", s["train_s"] / steps),
                    ("compute_s", s["compute_s"] / rounds),
                    ("comm_s", s["comm_s"] / rounds),
                    ("bytes_per_round", s["bytes"] / rounds),
                    ("moved_per_round", s["bytes_moved"] / rounds),
                    ("final_test_acc", s["final_test_acc"]),
                ):
                    stats.setdefault(key, []).append(value)
    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in per_round.items()}
    row: dict[str, Any] = {"workers": workers, "local_steps": args.local_steps, **med}
    if "resist" in med and "localsgd" in med:
        row["measured_ratio"] = med["resist"]["round_s"] / med["localsgd"]["round_s"]
        row["compute_ratio_measured"] = med["resist"]["compute_s"] / med["localsgd"]["compute_s"]
        row["implied_ratio"] = implied_ratio(
            _config("resist", workers, args, "unused"), workers, args.min_depth
        )
    row["all"] = per_round
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--protocols", nargs="+", default=["resist", "localsgd"])
    parser.add_argument("--model", choices=["preact_resnet", "mlp"], default="preact_resnet")
    parser.add_argument("--hidden", type=int, default=4096, help="MLP width (--model mlp)")
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--min-depth", type=int, default=0)
    parser.add_argument("--data-epochs", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/bench/rounds-cpu.json")
    args = parser.parse_args(argv)
    rows = [measure(w, args) for w in args.workers]
    model = (
        f"2-layer IST MLP width {args.hidden}, digits (64 features)"
        if args.model == "mlp"
        else "preact_resnet101 width 0.125, digits 8x8"
    )
    out = write_record("rounds", f"{model}, batch 32 per worker", rows, args.out, argv)
    print(
        "| workers | protocol | round (ms) | step (ms) | compute/round (ms) | comm/round (ms) "
        "| MB/round (paper) | MB/round (moved) | final acc |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for name in args.protocols:
            m = r[name]
            print(
                f"| {r['workers']} | {name} | {1e3 * m['round_s']:.1f} | {1e3 * m['step_s']:.2f} | "
                f"{1e3 * m['compute_s']:.1f} | {1e3 * m['comm_s']:.1f} | "
                f"{m['bytes_per_round'] / 1e6:.2f} | {m['moved_per_round'] / 1e6:.2f} | "
                f"{m['final_test_acc']:.3f} |"
            )
        if "implied_ratio" in r:
            print(
                f"| {r['workers']} | resist/localsgd | ratio {r['measured_ratio']:.2f} | | "
                f"compute ratio {r['compute_ratio_measured']:.2f} | | implied by blocks "
                f"{r['implied_ratio']:.2f} | | |"
            )
    print(f"recorded in {out}")


if __name__ == "__main__":
    main()
