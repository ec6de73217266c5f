"""PowerSGD: rank-r gradient compression with error feedback, every step."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
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
class PowerSGDConfig(ProtocolConfig):
    """The options of torch's ``PowerSGDState``, with the paper's defaults."""

    name: str = "powersgd"
    rank: int = 2  # r: rank 2 reaches full-precision accuracy on CIFAR-10 ResNet-18 (paper)
    warm_start: bool = True  # reuse last step's Q (the paper's warm start)
    error_feedback: bool = True
    min_compression_rate: float = 2.0  # compress a matrix only if (n+m)·r·this < n·m
    start_iter: int = 0  # plain all-reduce for this many steps first (torch's default: 1000)
    seed: int = 0  # of the random initial Q (torch: PowerSGDState.random_seed)


def should_compress(n: int, m: int, rank: int, min_rate: float) -> bool:
    """Whether an n×m gradient is worth compressing to rank ``rank``."""
    return (n + m) * rank * min_rate < n * m


def orthogonalize(matrices: torch.Tensor) -> None:
    """Orthonormalise the columns of a batch of matrices in place: Gram-Schmidt for rank
    ≤ 2 (as torch's hook), QR above."""
    rank = matrices.shape[2]
    if rank > 2:
        q, _ = torch.linalg.qr(matrices)
        matrices.copy_(q)
        return
    for i in range(rank):
        col = matrices[:, :, i : i + 1]
        col /= torch.norm(col, dim=1, keepdim=True)
        if i + 1 < rank:
            rest = matrices[:, :, i + 1 :]
            rest -= torch.sum(col * rest, dim=1, keepdim=True) * col


def plan(shapes: list[torch.Size], rank: int, min_rate: float) -> tuple[list[int], list[int]]:
    """Which gradients (by index) are compressed, in the order they are processed (grouped
    by matrix shape, first seen first, as torch's hook), and which are all-reduced whole."""
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    whole = []
    for i, shape in enumerate(shapes):
        n, m = shape[0], int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if should_compress(n, m, min(n, m, rank), min_rate):
            by_shape[(n, m)].append(i)
        else:
            whole.append(i)
    return [i for group in by_shape.values() for i in group], whole


class PowerSGD(Protocol[PowerSGDConfig]):
    """PowerSGD (Vogels, Karimireddy, Jaggi; NeurIPS 2019, arXiv 1905.13727).

    Every step, the gradients (with the error left over from the last step added) are
    compressed: each gradient reshaped to an n×m matrix M gets P = M·Q with a Q (m×r)
    kept from the last step (warm start; random at first), P is all-reduced and
    orthonormalised, Q = Mᵀ·P is all-reduced and averaged, and the update is P·Qᵀ; what
    was not transmitted (the local gradient plus error, minus the update) is kept as the
    next step's error (error feedback). Vectors (biases, BN) and matrices too small to be
    worth compressing (``min_compression_rate``) are all-reduced whole.

    This is torch's ``powerSGD_hook`` (``torch.distributed.algorithms.ddp_comm_hooks``)
    step for step: the gradients in DDP's bucket order (reversed registration), grouped
    by shape, the same random first Q (``numpy.random.RandomState(seed)``), sums where
    torch sums (P) and means where it averages; a test checks our gradients against the
    hook's inside torch DDP. It is not called directly because it issues its own
    collectives on the process group from inside DDP's reducer, so ``Comm`` would
    neither count nor time them.
    Per step, summed over S workers: 2·S·(Σ_compressed (n+m)·r + Σ_whole |g|)·4 bytes.
    With no matrix compressed and no error feedback it is data parallel SGD.
    """

    name = "powersgd"
    Config = PowerSGDConfig
    title = "PowerSGD"
    style = ("#56b4e9", "*")
    equivalences = (
        Equivalence(
            "nothing worth compressing and no error feedback: data parallel SGD",
            "ddp",
            mine={"min_compression_rate": 1e9, "error_feedback": False},
            atol=1e-6,
        ),
    )

    @classmethod
    def supports(cls, cfg: PowerSGDConfig, info: ProblemInfo, workers: int) -> str | None:
        if cfg.rank < 1:
            return f"protocol.rank must be >= 1, got {cfg.rank}"
        if cfg.start_iter < 0:
            return f"protocol.start_iter must be >= 0, got {cfg.start_iter}"
        if not 0 <= cfg.seed < 2**32:  # numpy.random.RandomState's range
            return f"protocol.seed must be in 0..{2**32 - 1}, got {cfg.seed}"
        return super().supports(cfg, info, workers)

    @classmethod
    def paper_bytes_per_round(cls, cfg: PowerSGDConfig, info: ProblemInfo, workers: int) -> int:
        """Per step after ``start_iter`` (before it: data parallel's bytes)."""
        if workers == 1:
            return 0
        shapes = [p.shape for p in reversed(list(info.model.parameters())) if p.requires_grad]
        compressed, whole = plan(shapes, cfg.rank, cfg.min_compression_rate)
        numel = sum(shapes[i].numel() for i in whole)
        for i in compressed:
            n, m = shapes[i][0], shapes[i].numel() // shapes[i][0]
            numel += (n + m) * min(n, m, cfg.rank)
        return 2 * workers * 4 * numel

    def setup(
        self, model: nn.Module, comm: Comm, make_optimizer: OptimizerFactory, info: ProblemInfo
    ) -> None:
        super().setup(model, comm, make_optimizer, info)
        self.params = [p for p in reversed(list(model.parameters())) if p.requires_grad]
        shapes = [p.shape for p in self.params]
        self.compressed, self.whole = plan(shapes, self.cfg.rank, self.cfg.min_compression_rate)
        self.iter = 0
        self.error: torch.Tensor | None = None
        self.p_memory: torch.Tensor | None = None
        self.q_memory: torch.Tensor | None = None
        self.rng = np.random.RandomState(self.cfg.seed)

    @torch.no_grad()
    def after_backward(self, work: Work) -> None:
        grads = []
        for p in self.params:
            if p.grad is None:  # an unused parameter still takes part
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        if self.iter < self.cfg.start_iter:
            self.comm.all_reduce_mean_(grads)
        else:
            self._compressed_mean(grads)
        self.iter += 1

    def _compressed_mean(self, grads: list[torch.Tensor]) -> None:
        flat = flatten(grads)  # DDP's bucket: local gradients, in bucket order
        if self.cfg.error_feedback:
            if self.error is not None:
                flat.add_(self.error)
            before = flat.clone()
        views, offset = [], 0
        for g in grads:
            views.append(flat[offset : offset + g.numel()].view(g.shape[0], -1))
            offset += g.numel()
        matrices = [views[i].unsqueeze(0) for i in self.compressed]
        ranks = [min(*m.shape[1:], self.cfg.rank) for m in matrices]
        fresh = not self.cfg.warm_start or self.p_memory is None
        if fresh:
            self.p_memory = flat.new_empty(
                sum(m.shape[1] * r for m, r in zip(matrices, ranks, strict=True))
            )
            self.q_memory = flat.new_empty(
                sum(m.shape[2] * r for m, r in zip(matrices, ranks, strict=True))
            )
        assert self.p_memory is not None and self.q_memory is not None
        ps, qs, p_at, q_at = [], [], 0, 0
        for m, r in zip(matrices, ranks, strict=True):
            ps.append(self.p_memory[p_at : p_at + m.shape[1] * r].view(1, m.shape[1], r))
            qs.append(self.q_memory[q_at : q_at + m.shape[2] * r].view(1, m.shape[2], r))
            p_at, q_at = p_at + m.shape[1] * r, q_at + m.shape[2] * r
        if fresh:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.rng.randint(1_000_000_000))
                for q in qs:
                    q.copy_(torch.randn(*q.shape, device="cpu", dtype=q.dtype))
                    orthogonalize(q)
        else:
            for q in qs:
                orthogonalize(q)
        for m, q, p in zip(matrices, qs, ps, strict=True):
            torch.bmm(m, q, out=p)
        whole = [views[i] for i in self.whole]
        self.comm.all_reduce_(whole, mean=True)  # vectors and small matrices, whole
        self.comm.all_reduce_([self.p_memory])  # summed, as torch's hook
        for p in ps:
            orthogonalize(p)
        for m, p, q in zip(matrices, ps, qs, strict=True):
            torch.bmm(m.transpose(1, 2), p, out=q)
        self.comm.all_reduce_([self.q_memory], mean=True)
        for p, q, m in zip(ps, qs, matrices, strict=True):
            torch.bmm(p, q.transpose(1, 2), out=m)
        if self.cfg.error_feedback:
            self.error = before - flat
        unflatten_into(flat, grads)

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.work.optimizer.state_dict(),
            "iter": self.iter,
            "error": self.error,
            "p": self.p_memory,
            "q": self.q_memory,
            "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.iter, self.error = int(state["iter"]), state["error"]
        self.p_memory, self.q_memory = state["p"], state["q"]
        self.rng.set_state(state["rng"])
