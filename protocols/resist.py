"""ResIST: random layer-wise sub-ResNets trained independently, then aggregated."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from protocols.base import (
    Equivalence,
    OptimizerFactory,
    ProblemInfo,
    Protocol,
    RoundsConfig,
    Work,
    float_state,
    nbytes,
)
from suite.config import ConfigError
from suite.dist import Comm
from suite.models.flops import count_macs, sub_resnet_macs
from suite.seeding import seeded_generator

#: Minimum depth per worker count used for the paper's tables [inferred from its
#: communication table; shared/reference/protocols.md §1].
PAPER_MIN_DEPTH = {2: 11, 4: 6, 8: 4}


def sub_depth(num_blocks: int, workers: int, min_depth: int = 0) -> int:
    """Blocks in each worker's sub-ResNet before the leftovers: d = max(⌊P/S⌋, m)."""
    return max(num_blocks // workers, min_depth)


def share_sizes(num_blocks: int, workers: int, min_depth: int = 0) -> list[int]:
    """Blocks each worker holds in a round, as the released sampler deals them: d each,
    and when S·d < P the P − S·d blocks left over one each to the first workers
    (P = 22, S = 4: [6, 6, 5, 5]; S = 8: [3, 3, 3, 3, 3, 3, 2, 2])."""
    per = sub_depth(num_blocks, workers, min_depth)
    left = max(0, num_blocks - workers * per)
    return [per + (k < left) for k in range(workers)]


def copies_dealt(num_blocks: int, workers: int, min_depth: int = 0) -> int:
    """Block copies dealt per round, Σ_k |share_k| = max(P, S·m)."""
    return sum(share_sizes(num_blocks, workers, min_depth))


def test_time_scale(num_blocks: int, workers: int, min_depth: int = 0) -> float:
    """The residual-branch scale of the partitioned blocks at test time: the share of the
    P blocks an average sub-ResNet held, copies dealt / (S·P).

    Like dropout's keep probability, it is the chance that a given block was active in a
    given worker's sub-network. Shares are unequal when S does not divide P ([6, 6, 5, 5]
    of 22), and a per-worker rule would have to pick one worker; the average over workers
    is the expectation over a random worker, and it equals the released code's
    max(1/S, m/P) in every case: without a minimum depth all P blocks are dealt once
    (P / (S·P) = 1/S), with one that forces sharing S·m copies are dealt (m/P ≥ 1/S).
    """
    return copies_dealt(num_blocks, workers, min_depth) / (workers * num_blocks)


def deal(num_blocks: int, workers: int, min_depth: int, gen: torch.Generator) -> list[list[int]]:
    """One round's partition: the partitionable blocks each worker holds (sorted).

    The released sampler (``dunchen/ResIST_release``): worker k gets ``share_sizes[k]``
    slots; enough fresh permutations of the P blocks are concatenated to fill all slots
    and dealt in contiguous chunks, so every block is dealt at least once; duplicates
    inside a chunk (where two permutations meet) are dropped and the chunk is padded
    with random other blocks back to its size. Without a minimum depth this is one
    permutation: the chunks are disjoint and cover all P blocks. With one, a block may
    go to several workers.
    """
    sizes = share_sizes(num_blocks, workers, min_depth)
    if min(sizes) < 1 or max(sizes) > num_blocks:
        raise ValueError(f"cannot deal {num_blocks} blocks to {workers} workers ({sizes})")
    slots: list[int] = []
    while len(slots) < sum(sizes):
        slots += torch.randperm(num_blocks, generator=gen).tolist()
    chunks, start = [], 0
    for size in sizes:
        chunk = list(dict.fromkeys(slots[start : start + size]))
        start += size
        while len(chunk) < size:
            candidate = int(torch.randint(num_blocks, (1,), generator=gen))
            if candidate not in chunk:
                chunk.append(candidate)
        chunks.append(sorted(chunk))
    return chunks


def owners(chunks: list[list[int]], num_blocks: int) -> list[list[int]]:
    """For each block, the ranks holding it (ascending)."""
    result: list[list[int]] = [[] for _ in range(num_blocks)]
    for rank, chunk in enumerate(chunks):
        for b in chunk:
            result[b].append(rank)
    return result


@dataclass(frozen=True)
class ResISTConfig(RoundsConfig):
    """ℓ, the minimum depth, the optimizer state at a round's start, a warm-up."""

    name: str = "resist"
    local_steps: int = 10  # the paper used 50 (experiment=resist_cifar)
    min_depth: int = 0  # m: blocks per sub-ResNet at least (0: ⌊P/S⌋ or one more, disjoint)
    optimizer_state: Literal["reset", "keep"] = "reset"  # reset: new every round (code)
    warmup_epochs: float = 0.0  # data-epochs of local SGD on the full model first


def paper_min_depth(workers: int) -> int:
    """ResIST's minimum depth in the paper's tables, by worker count (the presets'
    ``${paper_min_depth:${workers}}``)."""
    if int(workers) not in PAPER_MIN_DEPTH:
        raise ConfigError(
            f"the paper's presets define a minimum depth for workers in "
            f"{sorted(PAPER_MIN_DEPTH)}, not {workers}; set protocol.min_depth yourself"
        )
    return PAPER_MIN_DEPTH[int(workers)]


class ResIST(Protocol[ResISTConfig]):
    """ResIST (Dun, Wolfe, Jermaine, Kyrillidis; UAI 2022, arXiv 2107.00961).

    Each round the non-first blocks of stage 3 (P of them) are dealt at random to the S
    workers as the released sampler does (``deal``): max(⌊P/S⌋, m) each, the blocks left
    over one more to each of the first workers, so every block is trained every round;
    the same partition on every rank from the shared seed, so it costs no communication.
    A worker trains its sub-ResNet, every shared layer plus its blocks, for ℓ local
    steps; blocks it does not hold are skipped (identity, no compute). Then,
    with no parameter server, shared tensors are averaged with one all-reduce and each
    block is averaged among its owners at one reducer and handed by point-to-point
    transfers (one flat buffer per pair of ranks) to its next owners only.
    The full model is evaluated with each partitioned block's residual branch scaled by
    the share of the blocks an average sub-ResNet held, copies dealt / (S·P): 1/S, or
    m/P when a minimum depth m makes workers share blocks (``test_time_scale``; equal to
    the released code's max(1/S, m/P) also when the shares are unequal).
    Per round, summed over workers (paper convention, fp32):
    2·S·|θ_shared|·4 + 2·(block copies dealt)·|block|·4 bytes.
    S = 1 with every block active and ``optimizer_state=keep`` is plain training.
    """

    name = "resist"
    Config = ResISTConfig
    title = "ResIST"
    style = ("#029e73", "^")
    point_to_point_hops = 2  # blocks to their averaging holder, then on to the next ones
    replicas_agree_after_round = False  # blocks live on their holders; see agreed_state
    equivalences = (
        Equivalence(
            "at one worker with the optimizer kept (every block active): plain SGD",
            "single",
            mine={"optimizer_state": "keep"},
            run={"workers": 1},
        ),
        Equivalence(
            "a warm-up over the whole budget: local SGD with the optimizer reset",
            "localsgd",
            mine={"warmup_epochs": 1000.0},
            theirs={"optimizer_state": "reset"},
            atol=1e-5,
        ),
    )

    @classmethod
    def resolvers(cls) -> dict[str, Callable[..., Any]]:
        return {"paper_min_depth": paper_min_depth}

    @classmethod
    def supports(cls, cfg: ResISTConfig, info: ProblemInfo, workers: int) -> str | None:
        blocks = getattr(info.model, "partitionable_blocks", None)
        if blocks is None:
            return "protocol=resist needs a ResNet with a partitionable stage (model=preact_resnet)"
        num = len(blocks())
        if num == 0:
            return (
                "protocol=resist: this model has no partitionable blocks (stage 3 needs at "
                "least 2 blocks); use model.depth=34, 101, 152 or 200"
            )
        if (reason := super().supports(cfg, info, workers)) is not None:
            return reason
        if not 0 <= cfg.min_depth <= num:
            return f"protocol.min_depth must be in 0..{num}, got {cfg.min_depth}"
        if cfg.min_depth == 0 and workers > num:
            return (
                f"protocol=resist with workers={workers} but only {num} partitionable blocks: "
                f"set protocol.min_depth (1..{num}) so blocks can be shared, or use at most "
                f"{num} workers"
            )
        return None

    @classmethod
    def paper_bytes_per_round(cls, cfg: ResISTConfig, info: ProblemInfo, workers: int) -> int:
        if workers == 1:
            return 0
        blocks = info.model.partitionable_blocks()  # type: ignore[operator]
        block = nbytes(float_state(blocks[0]))
        shared = nbytes(float_state(info.model)) - len(blocks) * block
        return 2 * workers * shared + cls.paper_bytes_point_to_point(cfg, info, workers)

    @classmethod
    def paper_bytes_point_to_point(cls, cfg: ResISTConfig, info: ProblemInfo, workers: int) -> int:
        """The blocks: every copy dealt goes to its holder and comes back (the shared
        layers are all-reduced)."""
        if workers == 1:
            return 0
        blocks = info.model.partitionable_blocks()  # type: ignore[operator]
        dealt = copies_dealt(len(blocks), workers, cfg.min_depth)
        return 2 * dealt * nbytes(float_state(blocks[0]))

    @classmethod
    def compute_fraction(cls, cfg: ResISTConfig, info: ProblemInfo, workers: int) -> float:
        """MACs of the largest sub-ResNet (the round waits for it) over the full network's."""
        blocks = len(info.model.partitionable_blocks())  # type: ignore[operator]
        depth = max(share_sizes(blocks, workers, cfg.min_depth))
        x = torch.randn(2, *info.input_shape)
        return sub_resnet_macs(info.model, x, depth) / count_macs(info.model, x)

    def setup(
        self, model: nn.Module, comm: Comm, make_optimizer: OptimizerFactory, info: ProblemInfo
    ) -> None:
        super().setup(model, comm, make_optimizer, info)  # the replica and its optimizer
        self.seed, self.size = info.seed, comm.world_size
        self.blocks = model.partitionable_blocks()  # type: ignore[operator]
        self.block_state = [float_state(b) for b in self.blocks]
        in_blocks = {id(t) for state in self.block_state for t in state}
        self.shared = [t for t in float_state(model) if id(t) not in in_blocks]
        self.block_bytes = nbytes(self.block_state[0])
        # Ranks holding the current value of each block (all of them after the broadcast).
        self.holders = [set(range(self.size)) for _ in self.blocks]
        steps_per_round = info.batch_size * self.size * self.local_steps
        self.warmup_rounds = math.ceil(self.cfg.warmup_epochs * info.num_train / steps_per_round)
        self.scale = test_time_scale(len(self.blocks), self.size, self.cfg.min_depth)
        self.block_of = {id(p): i for i, b in enumerate(self.blocks) for p in b.parameters()}
        self.round = 0
        self._rounds: dict[int, list[list[int]]] = {}

    def partition(self, r: int) -> list[list[int]]:
        """Blocks held by each rank in round ``r`` (all of them during the warm-up)."""
        if r < self.warmup_rounds:
            return [list(range(len(self.blocks)))] * self.size
        if r not in self._rounds:
            gen = seeded_generator(self.seed, 0x5E157, r)
            self._rounds[r] = deal(len(self.blocks), self.size, self.cfg.min_depth, gen)
            self._rounds = {k: v for k, v in self._rounds.items() if k >= r - 1}
        return self._rounds[r]

    def begin_round(self, r: int) -> Work:
        self.round = r
        mine = set(self.partition(r)[self.comm.rank])
        for i, block in enumerate(self.blocks):
            block.active, block.residual_scale = i in mine, 1.0
        if self.cfg.optimizer_state == "reset":
            params = [
                p for p in self.model.parameters() if self.block_of.get(id(p), -1) in mine | {-1}
            ]
            self.work = Work(self.model, self.make_optimizer(params))
        return self.work

    @torch.no_grad()
    def end_round(self, r: int, work: Work) -> None:
        if r < self.warmup_rounds:  # local SGD on the full model
            self.comm.all_reduce_mean_(self.shared + [t for s in self.block_state for t in s])
            return
        self.comm.all_reduce_mean_(self.shared)
        held = owners(self.partition(r), len(self.blocks))
        after = owners(self.partition(r + 1), len(self.blocks))
        self._reduce(held, after)
        self._hand_out(after)

    def _reduce(self, held: list[list[int]], after: list[list[int]]) -> None:
        """Every holder hands its copy of a block to one reducer (a holder that keeps the
        block next round, when possible), which averages them and alone holds it. The
        reducer's own copy is a transfer to itself: counted as the papers count a
        worker's upload, never put on the wire."""
        reducers: dict[int, int] = {}
        moves: list[tuple[int, int, int]] = []  # (block, src, dst)
        for b, ranks in enumerate(held):
            if ranks:
                staying = [k for k in ranks if k in after[b]]
                reducers[b] = min(staying or ranks)
                moves += [(b, k, reducers[b]) for k in ranks]
        received = self._transfer(moves)
        for b, reducer in reducers.items():
            if reducer == self.comm.rank:
                for t, parts in zip(self.block_state[b], received[b], strict=True):
                    t.copy_(torch.stack(parts).sum(0).div_(len(parts)))
            self.holders[b] = {reducer}

    def _hand_out(self, after: list[list[int]]) -> None:
        """Send each block from its reducer to every one of next round's holders (to
        itself too when it stays a holder: the papers' download, not on the wire)."""
        moves = []
        for b, ranks in enumerate(after):
            source = min(self.holders[b])
            moves += [(b, source, k) for k in ranks]
            self.holders[b] |= set(ranks)
        for b, parts in self._transfer(moves).items():
            for t, (value,) in zip(self.block_state[b], parts, strict=True):
                t.copy_(value)

    def _transfer(self, moves: list[tuple[int, int, int]]) -> dict[int, list[list[torch.Tensor]]]:
        """Carry out (block, src, dst) moves in one batch: one flat buffer per rank pair.

        Returns, for each block this rank received, per tensor the list of copies received.
        """
        me = self.comm.rank
        outgoing: dict[int, list[int]] = defaultdict(list)
        incoming: dict[int, list[int]] = defaultdict(list)
        for b, src, dst in moves:
            if src == me:
                outgoing[dst].append(b)
            if dst == me:
                incoming[src].append(b)
        sends = {
            peer: torch.cat([t.reshape(-1) for b in bs for t in self.block_state[b]])
            for peer, bs in outgoing.items()
        }
        numel = sum(t.numel() for t in self.block_state[0])
        ref = self.block_state[0][0]
        recvs = {
            peer: torch.empty(numel * len(bs), dtype=ref.dtype, device=ref.device)
            for peer, bs in incoming.items()
        }
        self.comm.exchange(sends, recvs)
        received: dict[int, list[list[torch.Tensor]]] = defaultdict(
            lambda: [[] for _ in self.block_state[0]]
        )
        for peer, bs in incoming.items():
            offset = 0
            for b in bs:
                for i, t in enumerate(self.block_state[b]):
                    received[b][i].append(recvs[peer][offset : offset + t.numel()].view_as(t))
                    offset += t.numel()
        return received

    def agreed_state(self) -> dict[str, torch.Tensor]:
        """What every rank holds alike after a round: the shared layers (averaged),
        BN statistics included; the blocks live on their holders."""
        shared = {id(t) for t in self.shared}
        named = [*self.model.named_parameters(), *self.model.named_buffers()]
        return {n: t for n, t in named if id(t) in shared}

    @torch.no_grad()
    def gather_for_eval(self) -> None:
        moves = [(b, min(h), 0) for b, h in enumerate(self.holders) if 0 not in h]
        for b, parts in self._transfer(moves).items():
            for t, (value,) in zip(self.block_state[b], parts, strict=True):
                t.copy_(value)
        for h in self.holders:
            h.add(0)

    def eval_model(self) -> nn.Module:
        """The full network with test-time scaling of the partitioned residual branches."""
        scale = 1.0 if self.round < self.warmup_rounds else self.scale  # still full-model SGD
        for block in self.blocks:
            block.active, block.residual_scale = True, scale
        return self.model

    def state_dict(self) -> dict[str, Any]:
        # With optimizer_state=reset a fresh optimizer is built every round: nothing to keep.
        keep = self.cfg.optimizer_state == "keep"
        return {
            "optimizer": self.work.optimizer.state_dict() if keep else None,
            "holders": self.holders,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["optimizer"] is not None:
            self.work.optimizer.load_state_dict(state["optimizer"])
        self.holders = [set(h) for h in state["holders"]]
