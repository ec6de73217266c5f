"""Data parallel: gradients averaged across workers after every backward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from protocols.base import Equivalence, ProblemInfo, Protocol, ProtocolConfig, Work, nbytes


@dataclass(frozen=True)
class DDPConfig(ProtocolConfig):
    """DDP has no knobs."""

    name: str = "ddp"


class DDP(Protocol[DDPConfig]):
    """Synchronous data parallel SGD (every-step gradient all-reduce).

    Each worker computes the gradient of its own mini-batch; the gradients are averaged
    with one all-reduce of a flat fp32 buffer, so every replica takes the same step and
    the replicas never drift. Equivalent to ``torch.nn.parallel.DistributedDataParallel``
    (which the tests check) and, on disjoint shards, to one worker with an N× batch.
    Per step, summed over S workers: 2·S·|θ|·4 bytes (paper convention).
    BN running statistics (``model.bn=running``) are not communicated: each worker updates
    its own from its batches and rank 0 evaluates with its own. torch DDP instead
    broadcasts rank 0's buffers before every forward (``broadcast_buffers=True``); rank 0's
    statistics then still come from rank 0's batches alone, so the evaluated model is the
    same, while the other ranks' buffers (never evaluated) differ.
    """

    name = "ddp"
    Config = DDPConfig
    title = "data parallel"
    style = ("#0173b2", "o")
    equivalences = (Equivalence("at one worker: plain SGD", "single", run={"workers": 1}),)

    @classmethod
    def paper_bytes_per_round(cls, cfg: DDPConfig, info: ProblemInfo, workers: int) -> int:
        grads = [p for p in info.model.parameters() if p.requires_grad]
        return 2 * workers * nbytes(grads) if workers > 1 else 0

    def after_backward(self, work: Work) -> None:
        grads = []
        for p in work.module.parameters():
            if p.requires_grad:
                if p.grad is None:  # an unused parameter still takes part in the average
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
        self.comm.all_reduce_mean_(grads)
