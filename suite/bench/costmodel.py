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
from pathlib import Path
from typing import Any

import protocols
from protocols.resist import PAPER_MIN_DEPTH, share_sizes
from suite.bench import record_path, round_floats, size_arguments, write_record
from suite.costmodel import TRAIN_FLOPS_PER_MAC, V100_TFLOPS, Link, hops, predict, project
from suite.models.resnet import preact_resnet
from suite.report.comm import paper_info, paper_model

#: The released script's setting: 40 epochs per worker (40·S data-epochs at S workers).
PAPER = {"batch": 128, "local_steps": 50, "epochs_per_worker": 40, "num_train": 50_000}


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
    size_arguments(parser, "small stand-in model (< 60 s)", repeats=None)
    args = parser.parse_args(argv)
    out = record_path(args, "costmodel", suffix="")
    found = [Path(m) for m in args.measurements if Path(m).exists()]
    record: dict[str, list[Any]] = {"rows": [], "probes": [], "ratios": []}
    for path in found:  # one record of every row, probe and ratio measured
        data = json.loads(path.read_text())
        for key in record:
            record[key] += data.get(key, [])
    checks, ratios = check(record), check_compute_ratio(record)
    workers: tuple[int, ...]
    if args.quick:  # ResNet-34 at width 1/16: five partitionable blocks
        info = paper_info(preact_resnet(34, 10, 3, 1 / 16, "batch"))
        workers, depth = (2, 4), {}
        label = "stand-in: preact_resnet34 width 1/16, CIFAR-10 shape"
    else:
        info, workers, depth = paper_info(paper_model(10)), (2, 4, 8), PAPER_MIN_DEPTH
        label = "pre-act ResNet-101 (paper), CIFAR-10"
    link = Link(args.gbit * 1e9, args.latency_us * 1e-6)
    projection = []
    for s in workers:
        ell = PAPER["local_steps"]
        configs = [
            protocols.parse_config(values)
            for values in (
                {"name": "ddp"},
                {"name": "localsgd", "local_steps": ell},
                {"name": "resist", "local_steps": ell, "min_depth": depth.get(s, 0)},
            )
        ]
        setting = {**PAPER, "data_epochs": PAPER["epochs_per_worker"] * s}
        rows = project(info, configs, s, args.tflops, link, setting)
        base = next(r for r in rows if r["protocol"] == "localsgd")
        blocks = len(info.model.partitionable_blocks())  # type: ignore[operator]
        for r in rows:
            r["speedup_vs_localsgd"] = base["train_s"] / r["train_s"]
            r["blocks"] = (
                max(share_sizes(blocks, s, depth.get(s, 0)))
                if r["protocol"] == "resist"
                else blocks
            )
        projection += rows
    paper = reported_times()
    for r in projection:
        reported_s = paper.get((r["protocol"], r["workers"]))
        r["reported_train_s"] = reported_s
        local_s = paper.get(("localsgd", r["workers"]))
        r["reported_speedup"] = local_s / reported_s if reported_s and local_s else None
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
