"""Single worker: the model trained by one process, the reference baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from protocols.base import ProblemInfo, Protocol


class Single(Protocol):
    """Plain mini-batch SGD on one worker; nothing is communicated.

    Seed 003 of the ResIST line compares against "identical ResNets trained on a single
    GPU". Communication per round: 0 bytes. Same as ``ddp`` or ``localsgd`` at workers=1.
    """

    name = "single"

    @dataclass(frozen=True)
    class Config:
        name: str = "single"

    @classmethod
    def paper_bytes_per_round(cls, cfg: Any, model: nn.Module, workers: int) -> int:
        return 0

    @classmethod
    def supports(cls, cfg: Any, info: ProblemInfo, workers: int) -> str | None:
        if workers != 1:
            return (
                f"protocol=single trains on exactly one worker; got workers={workers} "
                "(set workers=1)"
            )
        return None
