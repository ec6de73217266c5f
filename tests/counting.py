"""A test-only protocol with statistics: DDP that counts its rounds and reports its rank.

Spawned workers unpickle its Config, which imports this module and registers it there too.
"""

from dataclasses import dataclass

from protocols.base import ProtocolConfig, Work
from protocols.ddp import DDP


@dataclass(frozen=True)
class CountingConfig(ProtocolConfig):
    """No knobs."""

    name: str = "counting"


class Counting(DDP):
    """DDP whose ``stats()`` are the rounds it ended and its rank.

    For testing how statistics reach the metrics rows and the summary.
    Per step: as DDP.
    """

    name = "counting"
    Config = CountingConfig  # type: ignore[assignment]
    equivalences = ()
    ended = 0

    def end_round(self, r: int, work: Work) -> None:
        self.ended += 1

    def stats(self) -> dict[str, float]:
        return {"rounds_ended": float(self.ended), "rank": float(self.comm.rank)}
