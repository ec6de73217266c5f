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

``--links none 1gbit`` repeats every measurement on plain loopback and on an emulated
cluster (``launcher.link``, root only); ``--eval-every 1 --target 0.9`` also records the
training time to a test accuracy (evaluation is off the clock, so it does not change
the round times). ``suite.bench.cluster`` drives this for the emulated-cluster study.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
from collections.abc import Mapping
from typing import Any

import torch

import protocols
from suite.bench import write_record
from suite.config import RunConfig
from suite.launch import execute
from suite.problem import load_problem, parse_run_config
from suite.record import RunDir
from suite.sweep import compose


def implied_ratio(cfg: RunConfig, workers: int) -> float:
    """The compute of a worker's step relative to the full model's, as the protocol
    states it from multiply-accumulates (``compute_fraction``; ResIST: its largest
    sub-ResNet, which the round waits for)."""
    info = load_problem(cfg, torch.device("cpu")).info
    return protocols.get(cfg.protocol.name).compute_fraction(cfg.protocol, info, workers)


def _config(
    name: str, workers: int, args: argparse.Namespace, results: str, link: str | None = None
) -> RunConfig:
    """The run of protocol ``name`` as the command line composes it (with what the
    protocol selects, e.g. DiLoCo's AdamW), at the bench's ℓ, model and budget."""
    cls = protocols.get(name)
    knobs = {f.name for f in dataclasses.fields(cls.Config)}
    overrides = [f"protocol={name}", f"workers={workers}", f"train.data_epochs={args.data_epochs}"]
    overrides += [f"train.eval_every={args.eval_every}", "train.checkpoint=false"]
    overrides += ["launcher.device=cpu", "launcher.progress=false", f"results_dir={results}"]
    overrides += ["force=true"]
    if link is not None:
        overrides.append(f"launcher.link={link}")
    if "local_steps" in knobs:
        overrides.append(f"protocol.local_steps={args.local_steps}")
    if "optimizer_state" in knobs:  # the ResIST code rebuilds its optimizer every round
        overrides.append("protocol.optimizer_state=reset")
    if "min_depth" in knobs:
        overrides.append(f"protocol.min_depth={args.min_depth}")
    if args.model == "mlp":
        overrides += ["model=mlp", f"model.hidden={args.hidden}", "model.layers=2"]
    else:
        overrides.append("model=preact_resnet")
    overrides += args.set  # e.g. data=synthetic data.batch_size=128 train.compile=true
    return parse_run_config(compose(tuple(overrides)))


def time_to_target(rows: list[dict[str, Any]], target: float) -> float | None:
    """Training clock at the first evaluation reaching ``target`` test accuracy, or None."""
    for row in rows:
        if row.get("test_acc") is not None and row["test_acc"] >= target:
            return float(row["train_s"])
    return None


def run_stats(summary: Mapping[str, Any], target: float) -> dict[str, Any]:
    """Per-round figures of one completed run (and its time to ``target``)."""
    s, rounds, steps = summary, summary["rounds"], summary["steps"]
    rows = RunDir(s["run_dir"]).read_metrics()
    return {
        "round_s": s["train_s"] / rounds,
        "step_s": s["train_s"] / steps,
        "compute_s": s["compute_s"] / rounds,
        "comm_s": s["comm_s"] / rounds,
        "bytes_per_round": s["bytes"] / rounds,
        "moved_per_round": s["bytes_moved"] / rounds,
        "steps_per_round": steps / rounds,
        "final_test_acc": s["final_test_acc"],
        "train_s": s["train_s"],
        "tta_s": time_to_target(rows, target),
    }


def _median(values: list[Any]) -> Any:
    """Median of the values; None if any is None (a repeat that never reached a target)."""
    return None if any(v is None for v in values) else statistics.median(values)


def measure(workers: int, args: argparse.Namespace, link: str | None = None) -> dict[str, Any]:
    """Median per-round figures of each protocol, runs alternating across protocols."""
    per_round: dict[str, dict[str, list[Any]]] = {}
    target = args.target
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name in args.protocols:
                s = execute(_config(name, workers, args, tmp, link))
                assert s["status"] == "completed", s
                stats = per_round.setdefault(name, {})
                for key, value in run_stats(s, target).items():
                    stats.setdefault(key, []).append(value)
    med = {n: {k: _median(v) for k, v in d.items()} for n, d in per_round.items()}
    row: dict[str, Any] = {
        "workers": workers,
        "link": link or "loopback",
        "local_steps": args.local_steps,
        "target": target,
        **med,
    }
    if "resist" in med and "localsgd" in med:
        row["measured_ratio"] = med["resist"]["round_s"] / med["localsgd"]["round_s"]
        row["compute_ratio_measured"] = med["resist"]["compute_s"] / med["localsgd"]["compute_s"]
        row["implied_ratio"] = implied_ratio(_config("resist", workers, args, "unused"), workers)
    row["all"] = {
        n: {k: v for k, v in d.items() if k in ("round_s", "compute_s", "comm_s", "tta_s")}
        for n, d in per_round.items()
    }
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--protocols", nargs="+", default=["resist", "localsgd"])
    parser.add_argument("--model", choices=["preact_resnet", "mlp"], default="preact_resnet")
    parser.add_argument("--hidden", type=int, default=4096, help="MLP width (--model mlp)")
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--min-depth", type=int, default=0)
    parser.add_argument("--data-epochs", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--links", nargs="+", default=["none"], help="none (loopback) or tc rates, e.g. 1gbit"
    )
    parser.add_argument("--eval-every", type=float, default=1e9, help="data-epochs")
    parser.add_argument("--target", type=float, default=0.9, help="test accuracy to time")
    parser.add_argument("--out", default="results/bench/rounds-cpu.json")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="more overrides, last"
    )
    args = parser.parse_args(argv)
    load = os.getloadavg()
    links = [None if link == "none" else link for link in args.links]
    rows = [measure(w, args, link) for link in links for w in args.workers]
    model = (
        f"2-layer IST MLP width {args.hidden}, digits (64 features)"
        if args.model == "mlp"
        else "preact_resnet101 width 0.125, digits 8x8"
    )
    work = f"{model}, batch 32 per worker"
    if args.set:  # what the overrides made of it, as the runs composed it
        cfg = _config(args.protocols[0], args.workers[0], args, "unused")
        work = (
            f"{cfg.model.label()}, {cfg.data.name} {cfg.data}, batch {cfg.data.batch_size} "
            f"per worker, threads {cfg.launcher.threads}, compile {cfg.train.compile}, "
            f"overrides {' '.join(args.set)}"
        )
    out = write_record("rounds", work, rows, args.out, argv, load_before=load)
    print_table(rows, args.protocols)
    print(f"recorded in {out}")


def print_table(rows: list[dict[str, Any]], names: list[str]) -> None:
    """The rows as a markdown table."""
    print(
        "| workers | link | protocol | round (ms) | step (ms) | compute/round (ms) "
        "| comm/round (ms) | MB/round (paper) | MB/round (moved) | final acc | time to target |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for name in names:
            m = r[name]
            tta = "—" if m["tta_s"] is None else f"{m['tta_s']:.1f} s"
            print(
                f"| {r['workers']} | {r['link']} | {name} | {1e3 * m['round_s']:.1f} | "
                f"{1e3 * m['step_s']:.2f} | {1e3 * m['compute_s']:.1f} | "
                f"{1e3 * m['comm_s']:.1f} | {m['bytes_per_round'] / 1e6:.2f} | "
                f"{m['moved_per_round'] / 1e6:.2f} | {m['final_test_acc']:.3f} | {tta} |"
            )
        if "implied_ratio" in r:
            print(
                f"| {r['workers']} | {r['link']} | resist/localsgd | ratio "
                f"{r['measured_ratio']:.2f} | | compute ratio {r['compute_ratio_measured']:.2f} "
                f"| | implied by blocks {r['implied_ratio']:.2f} | | | |"
            )


if __name__ == "__main__":
    main()
