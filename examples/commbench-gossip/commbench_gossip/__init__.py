"""Gossip SGD on a ring, as a commbench plugin: this file is the whole protocol."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from protocols.base import (
    Equivalence,
    ProblemInfo,
    Protocol,
    RoundsConfig,
    Work,
    float_state,
    nbytes,
)
from suite.dist import flatten, unflatten_into


@dataclass(frozen=True)
class GossipConfig(RoundsConfig):
    """ℓ local steps between two gossip exchanges."""

    name: str = "gossip"
    local_steps: int = 1


def neighbours(rank: int, workers: int) -> list[int]:
    """A ring: the rank before and the rank after (one peer when there are two)."""
    return sorted({(rank - 1) % workers, (rank + 1) % workers} - {rank})


class Gossip(Protocol[GossipConfig]):
    """Decentralised parallel SGD on a ring (Lian et al., "Can Decentralized Algorithms
    Outperform Centralized Algorithms?", NeurIPS 2017, arXiv 1705.09056).

    Every worker takes ℓ local SGD steps, then sends its parameters (and BN buffers) to
    its two ring neighbours and replaces them with the average of itself and the two it
    received (Metropolis weights 1/3 each; with two workers the one neighbour, 1/2).
    There is no global average: models agree only in expectation.
    Per round, summed over S workers: S·min(2, S−1)·|θ|·4 bytes (each transfer once).
    With two workers it is local SGD.
    """

    name = "gossip"
    Config = GossipConfig
    title = "gossip SGD (ring)"
    replicas_agree_after_round = False  # models agree only in expectation
    equivalences = (
        Equivalence(
            "two workers: local SGD (the one neighbour's average is the global one)",
            "localsgd",
            theirs={"optimizer_state": "keep"},
            atol=1e-5,
            same_bytes=False,
        ),
    )

    @classmethod
    def paper_bytes_per_round(cls, cfg: GossipConfig, info: ProblemInfo, workers: int) -> int:
        if workers == 1:
            return 0
        return workers * min(2, workers - 1) * nbytes(float_state(info.model))

    @torch.no_grad()
    def end_round(self, r: int, work: Work) -> None:
        if self.comm.world_size == 1:
            return
        state = float_state(self.model)
        mine = flatten(state)
        peers = neighbours(self.comm.rank, self.comm.world_size)
        got = {peer: torch.empty_like(mine) for peer in peers}
        self.comm.exchange(dict.fromkeys(peers, mine), got)
        unflatten_into(torch.stack([mine, *got.values()]).mean(0), state)
