"""``train.compile``: the module a worker trains, compiled with ``torch.compile`` (inductor).

A residual network is compiled block by block, not whole: ResIST switches blocks off and
on every round, and a whole-network graph would be traced again for every new set of
active blocks (a guard on each block's ``active`` flag). Block by block, the graphs are
one per block shape and per on/off state (pre-act ResNet-101: 7 shapes, plus the
switched-off path), reused by every block of the same shape and every round. A network
without blocks (the MLPs; IST's sub-network has the same shape every round) is compiled
whole. Compiling in place (``nn.Module.compile``) keeps parameter names, so state dicts,
checkpoints and the protocols' exchanges are unchanged.

The number of graphs compiled goes into the run's summary (``compiled_graphs``); the
docs/performance.md gives the measured effect per protocol.
"""

from __future__ import annotations

from torch import nn


def compile_in_place(module: nn.Module) -> None:
    """Compile ``module`` for training: each of its residual blocks, or the whole of it."""
    blocks = getattr(module, "blocks", None)
    units = blocks() if callable(blocks) else []
    for unit in units or [module]:
        unit.compile()


class Compiler:
    """Compiles each module a worker trains once, the first time it trains it."""

    def __init__(self) -> None:
        self._compiled: list[nn.Module] = []  # a worker trains one module or a few

    def __call__(self, module: nn.Module) -> None:
        if not any(m is module for m in self._compiled):
            compile_in_place(module)
            self._compiled.append(module)

    @staticmethod
    def graphs() -> int:
        """Graphs compiled in this process so far (dynamo's count of unique graphs)."""
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
