"""Single worker: the model trained by one process, the reference baseline."""

from __future__ import annotations

from dataclasses import dataclass

from protocols.base import ProblemInfo, Protocol, ProtocolConfig


@dataclass(frozen=True)
class SingleConfig(ProtocolConfig):
    """One worker has no knobs."""

    name: str = "single"


class Single(Protocol[SingleConfig]):
    """Plain mini-batch SGD on one worker; nothing is communicated.

    Seed 003 of the ResIST line compares against "identical ResNets trained on a single
    GPU". Communication per round: 0 bytes. Same as ``ddp`` or ``localsgd`` at workers=1.
    """

    name = "single"
    Config = SingleConfig
    title = "single worker"
    style = ("#000000", "P")

    @classmethod
    def paper_bytes_per_round(cls, cfg: SingleConfig, info: ProblemInfo, workers: int) -> int:
        return 0

    @classmethod
    def supports(cls, cfg: SingleConfig, info: ProblemInfo, workers: int) -> str | None:
        if workers != 1:
            return (
                f"protocol=single trains on exactly one worker; got workers={workers} "
                "(set workers=1)"
            )
        return None
