"""A cost model of one round, checked on the emulated cluster, projected to the papers' setting.

    round = ℓ · t_step(sub-model)  +  B_rank / bandwidth  +  α · hops

- ``t_step``: compute of one local step of the model a worker trains (the full network,
  or ResIST's sub-ResNet), measured on this machine or, for a GPU, the step's FLOPs ÷ an
  assumed sustained FLOP rate (stated as an assumption, ``--tflops``);
- ``B_rank``: bytes each rank sends (and, at the same time, receives) over its own
  full-duplex link per round. Measured runs give it directly (``bytes_moved`` ÷ 2S); for
  the paper's model it comes from each protocol's ``paper_bytes_per_round``, the
  all-reduced part carried by a ring (2(S-1)/S of the buffer per rank);
- ``α · hops``: per-message latency times the sequential messages of a round (a ring
  all-reduce takes 2(S-1) hops; ResIST adds its two point-to-point exchanges).

The check: compute per step from the loopback runs of ``suite.bench.cluster``, bandwidth
and latency from its link probes, bytes from the runs → predicted round time on each
emulated link vs the measured one (error in %). Also the compute ratio ResIST/local SGD
implied by multiply-accumulates vs the measured one. The projection: the full
pre-act ResNet-101 on CIFAR-10, batch 128, ℓ = 50, minimum depth 11/6/4 at 2/4/8
workers, 10 Gbit/s, beside the ResIST paper's reported times and speedups.

    python -m suite.bench.costmodel                 # reads results/bench/cluster-cpu.json
    python -m suite.bench.costmodel --quick         # < 60 s: a small stand-in model
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import protocols
from protocols.resist import PAPER_MIN_DEPTH, share_sizes
from suite.bench import round_floats, write_record
from suite.models.flops import count_macs, sub_resnet_macs
from suite.models.resnet import preact_resnet

#: Assumed sustained fp32 FLOP rate of one V100 on this workload. An assumption, not a
#: measurement: about half the V100's 15.7 TFLOP/s fp32 peak (NVIDIA's ResNet-50 fp32
#: training, ~390 images/s × 24.6 GFLOP, is ~9.6 TFLOP/s; CIFAR's small maps use it less).
V100_TFLOPS = 8.0
PAPER = {"batch": 128, "local_steps": 50, "data_epochs": 160, "num_train": 50_000}
TRAIN_FLOPS_PER_MAC = 6  # 2 FLOPs per MAC; backward ≈ 2× forward


@dataclass(frozen=True)
class Link:
    """A worker's link as the collectives see it."""

    bandwidth_bps: float  # bits per second, each direction
    latency_s: float  # per sequential message (hop)


@dataclass(frozen=True)
class Round:
    """Predicted time of one round, by part."""

    compute_s: float
    transfer_s: float
    latency_s: float

    @property
    def total_s(self) -> float:
        return self.compute_s + self.transfer_s + self.latency_s


def predict(
    step_s: float, local_steps: float, bytes_per_rank: float, link: Link, hops: int
) -> Round:
    """round = ℓ · t_step + B_rank · 8 / bandwidth + α · hops."""
    return Round(
        local_steps * step_s, bytes_per_rank * 8 / link.bandwidth_bps, hops * link.latency_s
    )


def hops(protocol: str, workers: int) -> int:
    """Sequential messages per round: one ring all-reduce (2(S-1) hops), plus the
    protocol's point-to-point exchanges (ResIST: reduce, then hand out)."""
    return 2 * (workers - 1) + protocols.get(protocol).point_to_point_hops


def error_pct(predicted: float, measured: float) -> float:
    return 100.0 * (predicted - measured) / measured


def check(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Predicted vs measured round time for every row of a ``suite.bench.cluster`` record.

    Compute per step is the loopback run's (same protocol and workers); bandwidth and
    latency are that link's probe; bytes are the run's own."""
    probes = {(p["link"], p["workers"]): p for p in record["probes"]}
    loop = {(r["workers"], r["protocol"]): r for r in record["rows"] if r["link"] == "loopback"}
    out = []
    for r in record["rows"]:
        key = (r["workers"], r["protocol"])
        base, p = loop.get(key), probes.get((r["link"], r["workers"]))
        p_loop = probes.get(("loopback", r["workers"]))
        if base is None or p is None or p_loop is None:
            continue
        per_rank, messages = r["MB_per_rank"] * 1e6, hops(r["protocol"], r["workers"])
        step_s = base["compute_ms"] / 1e3 / base["local_steps"]
        pred = predict(step_s, r["local_steps"], per_rank, _link(p), messages)
        # Variant "with sync": the per-step time is everything the loopback round took
        # beyond its own modelled transfer and latency, i.e. compute plus waiting for
        # stragglers (ranks share the cores), so only the link's part is predicted.
        on_loop = predict(0.0, 0, base["MB_per_rank"] * 1e6, _link(p_loop), messages)
        step_sync_s = (base["round_ms"] / 1e3 - on_loop.total_s) / base["local_steps"]
        pred_sync = predict(step_sync_s, r["local_steps"], per_rank, _link(p), messages)
        measured = r["round_ms"] / 1e3
        out.append(
            {
                "link": r["link"],
                "workers": r["workers"],
                "protocol": r["protocol"],
                "compute_ms": 1e3 * pred.compute_s,
                "transfer_ms": 1e3 * pred.transfer_s,
                "latency_ms": 1e3 * pred.latency_s,
                "predicted_ms": 1e3 * pred.total_s,
                "measured_ms": r["round_ms"],
                "error_pct": error_pct(pred.total_s, measured),
                "predicted_sync_ms": 1e3 * pred_sync.total_s,
                "error_sync_pct": error_pct(pred_sync.total_s, measured),
            }
        )
    return out


def _link(probe: dict[str, Any]) -> Link:
    return Link(probe["bandwidth_bps"], probe["latency_s"])


def check_compute_ratio(record: dict[str, Any]) -> list[dict[str, Any]]:
    """ResIST's compute per round predicted from its MACs (ratio × local SGD's) vs measured."""
    out = []
    for q in record.get("ratios", []):
        out.append(
            {
                "link": q["link"],
                "workers": q["workers"],
                "implied_by_macs": q["implied_by_blocks"],
                "measured": q["resist_over_localsgd_compute"],
                "error_pct": error_pct(q["implied_by_blocks"], q["resist_over_localsgd_compute"]),
            }
        )
    return out


def paper_bytes_per_rank(name: str, cfg: Any, model: nn.Module, workers: int) -> float:
    """Bytes each rank sends per round, from the protocol's own ``paper_bytes_per_round``:
    its per-rank share (÷ 2S), with the all-reduced part carried by a ring (× 2(S-1)/S)."""
    protocol = protocols.get(name)
    total = protocol.paper_bytes_per_round(cfg, model, workers)
    p2p = protocol.paper_bytes_point_to_point(cfg, model, workers)
    ring = 2 * (workers - 1) / workers
    return (total - p2p) / (2 * workers) * ring + p2p / (2 * workers)


def project(
    model: nn.Module,
    image_size: int,
    workers: tuple[int, ...],
    tflops: float,
    link: Link,
    min_depth: dict[int, int],
    setting: dict[str, Any] = PAPER,
) -> list[dict[str, Any]]:
    """Predicted round and training time of ddp, localsgd and resist in a GPU setting."""
    x = torch.randn(2, 3, image_size, image_size)
    full = count_macs(model, x) / 2
    num_blocks = len(model.partitionable_blocks())  # type: ignore[operator]
    rows: list[dict[str, Any]] = []
    for s in workers:
        steps = math.ceil(setting["data_epochs"] * setting["num_train"] / (setting["batch"] * s))
        ell = setting["local_steps"]
        depth = max(share_sizes(num_blocks, s, min_depth.get(s, 0)))  # the slowest worker
        configs: dict[str, tuple[dict[str, Any], float, int]] = {
            "ddp": ({"name": "ddp"}, full, 1),
            "localsgd": ({"name": "localsgd", "local_steps": ell}, full, ell),
            "resist": (
                {"name": "resist", "local_steps": ell, "min_depth": min_depth.get(s, 0)},
                sub_resnet_macs(model, x, depth) / 2,
                ell,
            ),
        }
        for name, (values, macs, local) in configs.items():
            cfg = protocols.parse_config(values)
            step_s = TRAIN_FLOPS_PER_MAC * macs * setting["batch"] / (tflops * 1e12)
            per_rank = paper_bytes_per_rank(name, cfg, model, s)
            cost = predict(step_s, local, per_rank, link, hops(name, s))
            num_rounds = math.ceil(steps / local)
            rows.append(
                {
                    "workers": s,
                    "protocol": name,
                    "blocks": depth if name == "resist" else num_blocks,
                    "macs_per_image": macs,
                    "step_compute_s": step_s,
                    "MB_per_rank_per_round": per_rank / 1e6,
                    "round_compute_s": cost.compute_s,
                    "round_comm_s": cost.transfer_s + cost.latency_s,
                    "round_latency_s": cost.latency_s,
                    "round_s": cost.total_s,
                    "rounds": num_rounds,
                    "train_s": num_rounds * cost.total_s,
                }
            )
    by = {(r["workers"], r["protocol"]): r for r in rows}
    for r in rows:
        r["speedup_vs_localsgd"] = by[(r["workers"], "localsgd")]["train_s"] / r["train_s"]
    return rows


def calibrate(projection: list[dict[str, Any]], paper: dict[tuple[str, int], float]) -> None:
    """Where the paper reports local SGD's time: the effective link bandwidth that would
    make the model reproduce it (compute as assumed), and ResIST's time and speedup on that
    link. A fit to one reported number, not a prediction; added to the rows in place."""
    by = {(r["workers"], r["protocol"]): r for r in projection}
    for (name, workers), seconds in paper.items():
        local, resist = by.get((workers, "localsgd")), by.get((workers, "resist"))
        if name != "localsgd" or local is None or resist is None:
            continue
        comm = seconds / local["rounds"] - local["round_compute_s"] - local["round_latency_s"]
        if comm <= 0:
            continue
        bandwidth = local["MB_per_rank_per_round"] * 1e6 * 8 / comm
        transfer = resist["MB_per_rank_per_round"] * 1e6 * 8 / bandwidth
        resist_round = resist["round_compute_s"] + transfer + resist["round_latency_s"]
        local["fitted_gbit"] = bandwidth / 1e9
        resist["fitted_gbit"] = bandwidth / 1e9
        resist["fitted_train_s"] = resist["rounds"] * resist_round
        resist["fitted_speedup"] = seconds / resist["fitted_train_s"]


def reported_times() -> dict[tuple[str, int], float]:
    """The ResIST paper's Table 3 training times on CIFAR-10 (s), from ``reported.csv``."""
    from suite.report.reported import reported

    df = reported()
    df = df[(df.paper == "resist") & (df.metric == "train_s") & (df.data == "cifar10")]
    return {(r.protocol, int(r.workers)): float(r.value) for r in df.itertuples()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--measurements",
        nargs="+",
        default=["results/bench/cluster-cpu.json", "results/bench/cluster-w8-cpu.json"],
        help="suite.bench.cluster records (missing files are skipped)",
    )
    parser.add_argument("--tflops", type=float, default=V100_TFLOPS, help="assumed, per GPU")
    parser.add_argument("--gbit", type=float, default=10.0, help="link rate of the projection")
    parser.add_argument("--latency-us", type=float, default=50.0, help="per hop (assumed)")
    parser.add_argument("--quick", action="store_true", help="small stand-in model (< 60 s)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    out = args.out or f"results/bench/costmodel{'-quick' if args.quick else ''}.json"
    found = [Path(m) for m in args.measurements if Path(m).exists()]
    record: dict[str, list[Any]] = {"rows": [], "probes": [], "ratios": []}
    for path in found:  # one record of every row, probe and ratio measured
        data = json.loads(path.read_text())
        for key in record:
            record[key] += data.get(key, [])
    checks, ratios = check(record), check_compute_ratio(record)
    model: nn.Module
    workers: tuple[int, ...]
    if args.quick:  # ResNet-34 at width 1/16: five partitionable blocks
        model, workers, depth = preact_resnet(34, 10, 3, 1 / 16, "batch"), (2, 4), {}
        label = "stand-in: preact_resnet34 width 1/16, CIFAR-10 shape"
    else:
        from suite.report.comm import paper_model

        model, workers, depth = paper_model(10), (2, 4, 8), PAPER_MIN_DEPTH
        label = "pre-act ResNet-101 (paper), CIFAR-10"
    link = Link(args.gbit * 1e9, args.latency_us * 1e-6)
    projection = project(model, 32, workers, args.tflops, link, depth)
    paper = reported_times()
    for r in projection:
        reported_s = paper.get((r["protocol"], r["workers"]))
        r["reported_train_s"] = reported_s
        base = paper.get(("localsgd", r["workers"]))
        r["reported_speedup"] = base / reported_s if reported_s and base else None
    calibrate(projection, paper)
    assumptions = {
        "tflops_per_gpu": args.tflops,
        "link_gbit": args.gbit,
        "latency_us_per_hop": args.latency_us,
        "train_flops_per_mac": TRAIN_FLOPS_PER_MAC,
        **PAPER,
        "min_depth": depth,
        "model": label,
    }
    path = write_record(
        "costmodel",
        "cost model: compute + bytes ÷ bandwidth + latency × hops",
        round_floats(checks),
        out,
        argv,
        measurements=[str(p) for p in found],
        compute_ratio_check=round_floats(ratios),
        projection=round_floats(projection),
        assumptions=assumptions,
    )
    print_tables(checks, ratios, projection, assumptions)
    print(f"recorded in {path}")


def print_tables(
    checks: list[dict[str, Any]],
    ratios: list[dict[str, Any]],
    projection: list[dict[str, Any]],
    assumptions: dict[str, Any],
) -> None:
    """Markdown tables of the check and the projection."""
    if checks:
        print(
            "| link | workers | protocol | predicted (ms) | = compute + transfer + latency "
            "| measured (ms) | error | with loopback sync wait: predicted | error |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for c in checks:
            sync = "(input)" if c["link"] == "loopback" else f"{c['error_sync_pct']:+.1f} %"
            print(
                f"| {c['link']} | {c['workers']} | {c['protocol']} | {c['predicted_ms']:.1f} | "
                f"{c['compute_ms']:.1f} + {c['transfer_ms']:.1f} + {c['latency_ms']:.2f} | "
                f"{c['measured_ms']:.1f} | {c['error_pct']:+.1f} % | "
                f"{c['predicted_sync_ms']:.1f} | {sync} |"
            )
    if ratios:
        print("\n| link | workers | resist/localsgd compute from MACs | measured | error |")
        print("|---|---|---|---|---|")
        for q in ratios:
            print(
                f"| {q['link']} | {q['workers']} | {q['implied_by_macs']:.2f} | "
                f"{q['measured']:.2f} | {q['error_pct']:+.1f} % |"
            )
    print(
        f"\nProjection ({assumptions['model']}; {assumptions['tflops_per_gpu']} TFLOP/s per GPU "
        f"assumed, {assumptions['link_gbit']} Gbit/s, {assumptions['latency_us_per_hop']} µs/hop)"
    )
    print(
        "| workers | protocol | blocks | compute/round (s) | comm/round (s) | train (s) "
        "| speedup vs localsgd | reported train (s) | reported speedup "
        "| fitted link (Gbit/s) | speedup on it |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in projection:
        rep = "—" if r["reported_train_s"] is None else f"{r['reported_train_s']:.0f}"
        rsp = "—" if r["reported_speedup"] is None else f"{r['reported_speedup']:.2f}×"
        fit = f"{r['fitted_gbit']:.3f}" if "fitted_gbit" in r else "—"
        fsp = f"{r['fitted_speedup']:.2f}×" if "fitted_speedup" in r else "—"
        print(
            f"| {r['workers']} | {r['protocol']} | {r['blocks']} | {r['round_compute_s']:.2f} | "
            f"{r['round_comm_s']:.3f} | {r['train_s']:.0f} | {r['speedup_vs_localsgd']:.2f}× | "
            f"{rep} | {rsp} | {fit} | {fsp} |"
        )


if __name__ == "__main__":
    main()
