"""A cost model of one round (the analytic part; ``suite.bench.costmodel`` checks it
against measured rounds and projects the papers' setting).

    round = ℓ · t_step(sub-model)  +  B_rank / bandwidth  +  α · hops

- ``t_step``: compute of one local step of the model a worker trains: the full network
  times the protocol's own ``compute_fraction`` (ResIST's largest sub-ResNet, ...),
  measured on a machine or, for a GPU, the step's FLOPs ÷ an assumed sustained FLOP rate;
- ``B_rank``: bytes each rank sends (and, at the same time, receives) over its own
  full-duplex link per round, from each protocol's ``paper_bytes_per_round``, the
  all-reduced part carried by a ring (2(S-1)/S of the buffer per rank);
- ``α · hops``: per-message latency times the sequential messages of a round (a ring
  all-reduce takes 2(S-1) hops, plus the protocol's ``point_to_point_hops``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

import protocols
from protocols.base import ProblemInfo, ProtocolConfig
from suite.models.flops import count_macs

#: Assumed sustained fp32 FLOP rate of one V100 on this workload. An assumption, not a
#: measurement: about half the V100's 15.7 TFLOP/s fp32 peak (NVIDIA's ResNet-50 fp32
#: training, ~390 images/s × 24.6 GFLOP, is ~9.6 TFLOP/s; CIFAR's small maps use it less).
V100_TFLOPS = 8.0
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


def paper_bytes_per_rank(name: str, cfg: Any, info: ProblemInfo, workers: int) -> float:
    """Bytes each rank sends per round, from the protocol's own ``paper_bytes_per_round``:
    its per-rank share (÷ 2S), with the all-reduced part carried by a ring (× 2(S-1)/S)."""
    protocol = protocols.get(name)
    total = protocol.paper_bytes_per_round(cfg, info, workers)
    p2p = protocol.paper_bytes_point_to_point(cfg, info, workers)
    ring = 2 * (workers - 1) / workers
    return (total - p2p) / (2 * workers) * ring + p2p / (2 * workers)


def project(
    info: ProblemInfo,
    configs: list[ProtocolConfig],
    workers: int,
    tflops: float,
    link: Link,
    setting: dict[str, Any],
) -> list[dict[str, Any]]:
    """Predicted round and training time of each protocol config at ``workers`` in a GPU
    setting (``setting``: batch per worker, data_epochs, num_train)."""
    x = torch.randn(2, *info.input_shape)
    full = count_macs(info.model, x) / 2
    steps = math.ceil(setting["data_epochs"] * setting["num_train"] / (setting["batch"] * workers))
    rows: list[dict[str, Any]] = []
    for cfg in configs:
        cls = protocols.get(cfg.name)
        local = cls(cfg).local_steps
        macs = full * cls.compute_fraction(cfg, info, workers)
        step_s = TRAIN_FLOPS_PER_MAC * macs * setting["batch"] / (tflops * 1e12)
        per_rank = paper_bytes_per_rank(cfg.name, cfg, info, workers)
        cost = predict(step_s, local, per_rank, link, hops(cfg.name, workers))
        num_rounds = math.ceil(steps / local)
        rows.append(
            {
                "workers": workers,
                "protocol": cfg.name,
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
    return rows
