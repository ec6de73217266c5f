"""What protocols cost on a network: round time, compute, communication and bytes on plain
loopback and on emulated clusters (``launcher.link``), plus time to a target accuracy.

Each worker count and link runs ``suite.bench.rounds`` (same model, ℓ, batch and budget for
every protocol, runs alternating, medians of the repeats) and first probes the link with
real gloo all-reduces: the latency of a 4-byte all-reduce and the bandwidth of a large
one, which the cost model (``suite.bench.costmodel``) takes as inputs. Next to the measured
communication time stands the time its bytes need at the link's nominal rate: each rank
sends (and receives) moved ÷ 2S bytes per round over its own full-duplex link.

    python -m suite.bench.cluster                 # ddp, localsgd, resist; 2 and 4 workers;
                                                  # loopback, 1gbit, 100mbit (root)
    python -m suite.bench.cluster --quick         # < 60 s: 2 workers, 1 data-epoch
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from suite import netem
from suite.bench import record_path, round_floats, rounds, size_arguments, write_record
from suite.config import ConfigError
from suite.dist import Comm
from suite.spawn import run_ranks

LOOPBACK = "loopback"


def _probe_rank(rank: int, comm: Comm, big: int) -> tuple[float, float]:
    """Median seconds of a 1-float all-reduce and of a ``big``-float one."""
    small, large = torch.ones(1), torch.ones(big)
    dist.all_reduce(large)  # connections and buffers set up off the clock
    lat, bw = [], []
    for _ in range(30):
        start = time.perf_counter()
        dist.all_reduce(small)
        lat.append(time.perf_counter() - start)
    for _ in range(3):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(large)
        bw.append(time.perf_counter() - start)
    return statistics.median(lat), statistics.median(bw)


def probe(link: str | None, workers: int) -> dict[str, Any]:
    """The link as gloo sees it: per-hop latency and effective bandwidth (bits/s).

    A ring all-reduce over S ranks takes 2(S-1) sequential hops and sends 2(S-1)/S of its
    buffer from every rank; the latency is the small all-reduce's time per hop and the
    bandwidth what the large one achieves after its hops' latency."""
    nominal = netem.parse_rate(link) if link else None
    hops, share = 2 * (workers - 1), 2 * (workers - 1) / workers
    nbytes = 16 << 20 if nominal is None else int(nominal / 8 * 0.2 / share)
    nbytes = max(1 << 16, min(64 << 20, nbytes))
    with tempfile.TemporaryDirectory() as tmp:
        results = run_ranks(_probe_rank, workers, Path(tmp), nbytes // 4, link=link)
    small = max(r[0] for r in results)
    large = max(r[1] for r in results)
    latency = small / hops
    bandwidth = share * nbytes * 8 / max(large - hops * latency, 1e-9)
    return {
        "link": link or LOOPBACK,
        "workers": workers,
        "nominal_bps": nominal,
        "latency_s": latency,
        "bandwidth_bps": bandwidth,
        "probe_bytes": nbytes,
        "small_allreduce_s": small,
        "large_allreduce_s": large,
    }


def flat_rows(row: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """One compact record row per protocol of a ``rounds.measure`` row."""
    out = []
    workers, link = row["workers"], row["link"]
    nominal = None if link == LOOPBACK else netem.parse_rate(link)
    for name in names:
        m = row[name]
        per_rank = m["moved_per_round"] / (2 * workers)  # each direction of one link
        out.append(
            {
                "workers": workers,
                "link": link,
                "protocol": name,
                "local_steps": m["steps_per_round"],
                "round_ms": 1e3 * m["round_s"],
                "compute_ms": 1e3 * m["compute_s"],
                "comm_ms": 1e3 * m["comm_s"],
                "MB_paper": m["bytes_per_round"] / 1e6,
                "MB_per_rank": per_rank / 1e6,
                "bytes_over_rate_ms": None if nominal is None else 1e3 * per_rank * 8 / nominal,
                "final_test_acc": m["final_test_acc"],
                "train_s": m["train_s"],
                "tta_s": m["tta_s"],
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--protocols", nargs="+", default=["ddp", "localsgd", "resist"])
    parser.add_argument("--links", nargs="+", default=["none", "1gbit", "100mbit"])
    parser.add_argument("--slow-repeats", type=int, default=1, help="repeats on links below 1gbit")
    parser.add_argument("--data-epochs", type=float, default=10.0)
    parser.add_argument("--eval-every", type=float, default=1.0)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--min-depth", type=int, default=0)
    size_arguments(parser, "2 workers, 1 data-epoch (< 60 s)", repeats=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.workers, args.protocols, args.links = [2], ["localsgd", "resist"], ["none", "1gbit"]
        args.repeats, args.slow_repeats, args.data_epochs, args.eval_every = 1, 1, 1.0, 0.5
    args.model, args.hidden = "preact_resnet", 0
    out = record_path(args, "cluster")
    links: list[str | None] = []
    for link in args.links:
        if link == "none":
            links.append(None)
            continue
        try:
            netem.check(link, max(args.workers))
            links.append(link)
        except ConfigError as err:
            print(f"skipping link {link}: {err}")
    load = os.getloadavg()
    started = time.perf_counter()
    probes, rows, ratios = [], [], []
    for link in links:
        slow = link is not None and netem.parse_rate(link) < 10**9
        repeats = args.slow_repeats if slow else args.repeats
        for workers in args.workers:
            probes.append(probe(link, workers))
            row = rounds.measure(workers, _with_repeats(args, repeats), link)
            rows += flat_rows(row, args.protocols)
            if "implied_ratio" in row:
                ratios.append(
                    {
                        "workers": workers,
                        "link": row["link"],
                        "resist_over_localsgd_round": row["measured_ratio"],
                        "resist_over_localsgd_compute": row["compute_ratio_measured"],
                        "implied_by_blocks": row["implied_ratio"],
                    }
                )
    path = write_record(
        "cluster",
        "preact_resnet101 width 0.125, digits 8x8, batch 32 per worker, "
        f"ℓ={args.local_steps}, {args.data_epochs} data-epochs",
        round_floats(rows),
        out,
        argv,
        load_before=load,
        probes=round_floats(probes),
        ratios=round_floats(ratios),
        target_acc=args.target,
        wall_s=round(time.perf_counter() - started, 1),
    )
    print_tables(rows, ratios, probes)
    print(f"recorded in {path}")


def _with_repeats(args: argparse.Namespace, repeats: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "repeats": repeats})


def print_tables(
    rows: list[dict[str, Any]], ratios: list[dict[str, Any]], probes: list[dict[str, Any]]
) -> None:
    """The record as markdown tables."""
    print("| link | workers | latency/hop (µs) | bandwidth (Gbit/s) |")
    print("|---|---|---|---|")
    for p in probes:
        print(
            f"| {p['link']} | {p['workers']} | {1e6 * p['latency_s']:.0f} | "
            f"{p['bandwidth_bps'] / 1e9:.3f} |"
        )
    print(
        "\n| link | workers | protocol | round (ms) | compute (ms) | comm (ms) "
        "| bytes ÷ rate (ms) | MB/round (paper) | MB/rank/round | acc | time to target (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = "—" if r["bytes_over_rate_ms"] is None else f"{r['bytes_over_rate_ms']:.1f}"
        tta = "not reached" if r["tta_s"] is None else f"{r['tta_s']:.1f}"
        print(
            f"| {r['link']} | {r['workers']} | {r['protocol']} | {r['round_ms']:.1f} | "
            f"{r['compute_ms']:.1f} | {r['comm_ms']:.1f} | {rate} | {r['MB_paper']:.2f} | "
            f"{r['MB_per_rank']:.2f} | {r['final_test_acc']:.3f} | {tta} |"
        )
    print("\n| link | workers | resist/localsgd round | compute | implied by blocks |")
    print("|---|---|---|---|---|")
    for q in ratios:
        print(
            f"| {q['link']} | {q['workers']} | {q['resist_over_localsgd_round']:.2f} | "
            f"{q['resist_over_localsgd_compute']:.2f} | {q['implied_by_blocks']:.2f} |"
        )


if __name__ == "__main__":
    main()
