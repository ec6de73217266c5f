"""A test-only protocol whose replicas drift apart: DDP, but rank 1 nudges its weights
after every round. Rank 0 alone trains exactly as DDP does, so every check that looks
at rank 0 only (learning, bytes, resume) passes it; the contract kit's replica check
must not.

Spawned workers unpickle its Config, which imports this module and registers it there too.
"""

from dataclasses import dataclass

import torch

from protocols.base import ProtocolConfig, Work
from protocols.ddp import DDP


@dataclass(frozen=True)
class DriftingConfig(ProtocolConfig):
    """How far rank 1's first parameter moves each round."""

    name: str = "drifting"
    drift: float = 1e-3


class Drifting(DDP):
    """DDP whose rank 1 perturbs its first parameter after every round's sync.

    For testing the contract kit only.
    Per step: as DDP.
    """

    name = "drifting"
    Config = DriftingConfig  # type: ignore[assignment]
    equivalences = ()

    @torch.no_grad()
    def end_round(self, r: int, work: Work) -> None:
        if self.comm.rank == 1:
            next(self.model.parameters()).add_(self.cfg.drift)
