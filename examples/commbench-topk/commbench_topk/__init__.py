"""Top-k sparsified SGD with error feedback, as a commbench plugin: this file is the
whole protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from protocols.base import (
    Equivalence,
    OptimizerFactory,
    ProblemInfo,
    Protocol,
    ProtocolConfig,
    Work,
)
from suite.dist import Comm, flatten, unflatten_into


@dataclass(frozen=True)
class TopKConfig(ProtocolConfig):
    """``density``: the fraction of the gradient's entries each worker sends per step."""

    name: str = "topk"
    density: float = 0.01


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters whose gradients are sparsified and exchanged."""
    return [p for p in model.parameters() if p.requires_grad]


def kept(density: float, n: int) -> int:
    """k: how many of ``n`` entries a worker sends (at least one, at most all)."""
    return max(1, min(n, round(density * n)))


class TopK(Protocol[TopKConfig]):
    """Top-k sparsified SGD with error feedback (Stich, Cordonnier and Jaggi, "Sparsified
    SGD with Memory", NeurIPS 2018, arXiv 1809.07599; Lin et al., "Deep Gradient
    Compression", ICLR 2018, arXiv 1712.01887).

    After every backward pass each worker adds its residual (what it has not sent yet)
    to its flat gradient, keeps the k = density·|θ| entries of largest magnitude, and
    all-gathers them as (value, int32 index) pairs in one buffer of 2k fp32 words (the
    indices bit-cast). Every worker sums the S sparse gradients in rank order and divides
    by S, so the replicas take the same step and never drift; what it did not send stays
    in its residual for the next step. The optimizer (momentum included) runs on the
    aggregate: no momentum correction, no warm-up of the density (DGC's refinements).
    At density 1 it is data parallel SGD. BN running statistics are not communicated
    (as in ``ddp``). Per step, summed over S workers: S·S·2k·4 bytes (paper convention:
    each worker uploads its 2k words and downloads the other S−1 workers').
    """

    name = "topk"
    Config = TopKConfig
    title = "top-k SGD (error feedback)"
    equivalences = (
        Equivalence(
            "density 1: data parallel (every entry is sent, nothing is left over)",
            "ddp",
            mine={"density": 1.0},
            same_bytes=False,  # values and indices, gathered, against an all-reduce
        ),
    )

    @classmethod
    def supports(cls, cfg: TopKConfig, info: ProblemInfo, workers: int) -> str | None:
        if not 0 < cfg.density <= 1:
            return f"protocol.density must be in (0, 1], got {cfg.density}"
        return super().supports(cfg, info, workers)

    @classmethod
    def paper_bytes_per_round(cls, cfg: TopKConfig, info: ProblemInfo, workers: int) -> int:
        if workers == 1:
            return 0
        k = kept(cfg.density, sum(p.numel() for p in trainable(info.model)))
        return workers * workers * 2 * k * 4

    def setup(
        self, model: nn.Module, comm: Comm, make_optimizer: OptimizerFactory, info: ProblemInfo
    ) -> None:
        super().setup(model, comm, make_optimizer, info)
        params = trainable(model)
        n = sum(p.numel() for p in params)
        self.k = kept(self.cfg.density, n)
        self.residual = torch.zeros(n, dtype=torch.float32, device=params[0].device)

    @torch.no_grad()
    def after_backward(self, work: Work) -> None:
        grads = []
        for p in trainable(work.module):
            if p.grad is None:  # an unused parameter still takes part (as in ddp)
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        acc = flatten(grads).float().add_(self.residual)
        index = acc.abs().topk(self.k, sorted=False).indices
        packed = torch.cat([acc[index], index.to(torch.int32).view(torch.float32)])
        self.residual = acc.index_fill_(0, index, 0.0)  # the rest waits for the next step
        total = torch.zeros_like(acc)
        for part in self.comm.all_gather(packed):
            total.index_add_(0, part[self.k :].view(torch.int32).long(), part[: self.k])
        unflatten_into(total.div_(self.comm.world_size), grads)

    def stats(self) -> dict[str, float]:
        """The residual's norm at the end (largest over ranks): the gradient still unsent."""
        return {"residual_norm": float(self.residual.norm())}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "residual": self.residual.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.residual.copy_(state["residual"])
