"""A test-only protocol that crashes one rank mid-run.

Spawned workers unpickle its Config, which imports this module and registers it there too.
"""

from dataclasses import dataclass

from protocols.base import ProtocolConfig, Work
from protocols.ddp import DDP


@dataclass(frozen=True)
class FaultyConfig(ProtocolConfig):
    """Where to fail."""

    name: str = "faulty"
    fail_rank: int = 1
    fail_round: int = 3


class Faulty(DDP):
    """DDP that raises on one rank at a given round.

    For testing failure handling only.
    Per step: as DDP.
    """

    name = "faulty"
    Config = FaultyConfig  # type: ignore[assignment]
    equivalences = ()

    def begin_round(self, r: int) -> Work:
        if self.comm.rank == self.cfg.fail_rank and r == self.cfg.fail_round:
            raise RuntimeError(f"injected failure on rank {self.comm.rank} in round {r}")
        return super().begin_round(r)
