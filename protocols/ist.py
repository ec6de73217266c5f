"""IST: independent subnet training of fully connected networks, neurons partitioned."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
from suite.dist import Comm
from suite.models.mlp import MLP
from suite.seeding import seeded_generator


def partition_neurons(
    widths: list[int], workers: int, gen: torch.Generator, stratified: bool = False
) -> list[list[torch.Tensor]]:
    """``groups[l][k]``: the sorted neurons of hidden layer l given to worker k this round.

    Every hidden layer independently, split without replacement into ``workers`` equal
    groups (disjoint, covering the layer):

    - global (the centralised code): one random permutation of the H neurons, cut into S;
    - ``stratified`` (the decentralised code, where each rank serves a fixed slice of H/S
      neurons: ``[k·H/S, (k+1)·H/S)``): every slice is permuted and cut into S pieces of
      H/S², and worker j gets piece j of every slice, so exactly H/S² neurons from each
      server.
    """
    groups = []
    for width in widths:
        if width % workers:
            raise ValueError(f"hidden width {width} does not split into {workers} equal groups")
        if not stratified:
            perm = torch.randperm(width, generator=gen).view(workers, width // workers)
            groups.append([row.sort().values for row in perm])
            continue
        if width % (workers * workers):
            raise ValueError(f"hidden width {width} does not split into {workers}² equal pieces")
        served = width // workers
        pieces = [
            (k * served + torch.randperm(served, generator=gen)).view(workers, -1)
            for k in range(workers)
        ]
        groups.append([torch.cat([p[j] for p in pieces]).sort().values for j in range(workers)])
    return groups


@dataclass(frozen=True)
class Slot:
    """One tensor of the MLP and how it is indexed by hidden neurons.

    ``key`` is the hidden layer along whose neurons the tensor's ``key_dim`` runs (this
    decides who owns an entry); ``other`` the hidden layer of the remaining dimension of
    a matrix, or None when that dimension is the input or the classes (never split).
    """

    name: str
    key: int | None  # None: a shared tensor (an output bias), averaged over workers
    key_dim: int = 0
    other: int | None = None


def slots(model: MLP) -> list[Slot]:
    """The partitioned and shared tensors of an MLP, in a fixed order."""
    out: list[Slot] = []
    for l in range(len(model.hidden)):  # noqa: E741 - l is the papers' layer index
        out.append(Slot(f"hidden.{l}.weight", l, 0, l - 1 if l > 0 else None))
        if model.hidden[l].bias is not None:
            out.append(Slot(f"hidden.{l}.bias", l))
        out += [
            Slot(f"norms.{l}.{n}", l)
            for n in ("weight", "bias", "running_mean", "running_var")
            if getattr(model.norms[l], n) is not None
        ]
    out.append(Slot("out.weight", len(model.hidden) - 1, 1))
    if model.out.bias is not None:
        out.append(Slot("out.bias", None))
    return out


@dataclass(frozen=True)
class ISTConfig(RoundsConfig):
    """ℓ, who serves the model, and how neurons are drawn."""

    name: str = "ist"
    local_steps: int = 10
    sync: Literal["centralized", "decentralized"] = "centralized"
    partition: Literal["auto", "global", "stratified"] = "auto"


class IST(Protocol[ISTConfig]):
    """IST (Yuan, Wolfe, Dun, Tang, Kyrillidis, Jermaine; VLDB 2022, arXiv 1910.02120).

    Each round every hidden layer's neurons are permuted and split into S equal groups,
    one per worker (same partition on every rank from the shared seed). Worker k trains
    the subnet of its neurons: their rows of the first layer, the [its group, its group
    of the previous layer] block of each middle layer, their columns of the output layer
    and their BN entries, for ℓ local steps with a fresh optimizer. Then the disjoint
    pieces are written back (cross-group weights were not trained and stay), anything
    shared (an output bias) is averaged, and the layers are repartitioned.
    ``sync=centralized``: rank 0 holds the model and scatters/gathers subnets (the code's
    parameter server). ``sync=decentralized``: rank k owns a fixed 1/S of every hidden
    layer's neurons and serves their entries, so the model never sits on one rank.
    ``partition``: ``global`` permutes each layer as a whole (the centralised code);
    ``stratified`` lets each of the S slices split itself, so each worker gets exactly
    H/S² neurons of every slice (the decentralised code, where each server splits its
    own slice); ``auto`` (default) follows the code of the chosen sync mode. Both are
    uniform over neurons; stratified never gives one worker more of one server's neurons.
    Per round, summed over workers (paper convention): 2·Σ_k |subnet_k|·4 bytes, each
    worker receiving between 1/S² and 1/S of the weights. S = 1 is plain training.
    """

    name = "ist"
    Config = ISTConfig
    title = "IST"
    style = ("#d55e00", "D")
    selects = {"model": "mlp"}
    replicas_agree_after_round = False  # each rank holds its subnet; shared: agreed_state
    equivalences = (
        Equivalence(
            "at one worker: plain SGD (momentum-free: a fresh optimizer every round)",
            "single",
            run={"workers": 1, "optim": {"momentum": 0.0}},
            atol=1e-6,
        ),
        Equivalence(
            "both sync modes give the same model and bytes (one partition rule)",
            "ist",
            mine={"sync": "centralized", "partition": "stratified"},
            theirs={"sync": "decentralized", "partition": "stratified"},
        ),
    )

    @classmethod
    def supports(cls, cfg: ISTConfig, info: ProblemInfo, workers: int) -> str | None:
        if not isinstance(info.model, MLP):
            return "protocol=ist partitions the neurons of a fully connected net: use model=mlp"
        bad = [w for w in info.model.widths if w % workers]
        if bad:
            return (
                f"protocol=ist: hidden width {bad[0]} does not split into {workers} equal groups; "
                "use a worker count that divides model.hidden"
            )
        bad = [w for w in info.model.widths if w % (workers * workers)]
        if cls.stratified(cfg) and bad:
            return (
                f"protocol=ist with stratified partitions: hidden width {bad[0]} does not split "
                f"into {workers}² equal pieces; use protocol.partition=global, or a width "
                f"divisible by {workers * workers}"
            )
        return super().supports(cfg, info, workers)

    @staticmethod
    def stratified(cfg: ISTConfig) -> bool:
        """Whether neurons are drawn per server slice (see the class docstring)."""
        if cfg.partition == "auto":
            return bool(cfg.sync == "decentralized")
        return bool(cfg.partition == "stratified")

    @classmethod
    def paper_bytes_per_round(cls, cfg: ISTConfig, info: ProblemInfo, workers: int) -> int:
        sub = cls._subnet(info.model, workers)
        return 2 * workers * nbytes(float_state(sub)) if workers > 1 else 0

    @staticmethod
    def _subnet(model: nn.Module, workers: int) -> MLP:
        """A worker's subnet: the same MLP with every hidden width divided by S."""
        assert isinstance(model, MLP)
        return MLP(
            model.in_features,
            model.hidden_width // workers,
            model.num_layers,
            model.num_classes,
            model.variant,
        )

    def setup(
        self, model: nn.Module, comm: Comm, make_optimizer: OptimizerFactory, info: ProblemInfo
    ) -> None:
        assert isinstance(model, MLP)
        self.model, self.comm, self.make_optimizer = model, comm, make_optimizer
        self.seed, self.size, self.widths = info.seed, comm.world_size, model.widths
        self.sub = self._subnet(model, self.size).to(next(model.parameters()).device)
        self.slots = slots(model)
        self.full = dict(model.named_parameters()) | dict(model.named_buffers())
        self.part = dict(self.sub.named_parameters()) | dict(self.sub.named_buffers())
        if self.cfg.sync == "centralized":  # rank 0, the parameter server, owns everything
            self.owner = [torch.zeros(w, dtype=torch.long) for w in model.widths]
        else:  # rank k owns neurons [k·H/S, (k+1)·H/S) of every hidden layer
            self.owner = [torch.arange(w) // (w // self.size) for w in model.widths]
        self.groups: list[list[torch.Tensor]] = []
        self.work = Work(self.sub, make_optimizer(self.sub.parameters()))

    def partition(self, r: int) -> list[list[torch.Tensor]]:
        """This round's neuron groups (identical on every rank)."""
        gen = seeded_generator(self.seed, 0x157, r)
        return partition_neurons(self.widths, self.size, gen, self.stratified(self.cfg))

    def _pieces(self, worker: int, owner: int) -> list[Piece]:
        """The entries of ``worker``'s subnet that ``owner`` owns, tensor by tensor."""
        pieces = []
        for slot in self.slots:
            if slot.key is None:
                continue
            key = self.groups[slot.key][worker]
            positions = torch.nonzero(self.owner[slot.key][key] == owner).flatten()
            other = self.groups[slot.other][worker] if slot.other is not None else None
            if len(positions):
                pieces.append(Piece(slot, positions, key[positions], other))
        return pieces

    def _move(self, to_workers: bool) -> None:
        """Owners → workers (subnets out) or workers → owners (trained pieces back), in one
        batch of point-to-point transfers with one flat buffer per pair of ranks. A rank's
        pieces of its own subnet go to itself: counted as the paper counts them (every
        worker receives its whole subnet and sends it back), never put on the wire."""
        me = self.comm.rank
        plan = []  # (src, dst, pieces) for the transfers this rank takes part in
        for worker in range(self.size):
            for owner in range(self.size):
                if me in (worker, owner):
                    src, dst = (owner, worker) if to_workers else (worker, owner)
                    plan.append((src, dst, self._pieces(worker, owner)))
        read = (
            (lambda p: p.read_full(self.full)) if to_workers else (lambda p: p.read_part(self.part))
        )
        sends = {
            dst: torch.cat([read(p).reshape(-1) for p in ps])
            for src, dst, ps in plan
            if src == me and ps
        }
        ref = next(iter(self.full.values()))
        recvs = {
            src: torch.empty(
                sum(p.numel(self.full) for p in ps), dtype=ref.dtype, device=ref.device
            )
            for src, dst, ps in plan
            if dst == me and ps
        }
        self.comm.exchange(sends, recvs)
        for src, dst, ps in plan:
            if dst != me or not ps:
                continue
            offset = 0
            for p in ps:
                value = recvs[src][offset : offset + p.numel(self.full)].view(p.shape(self.full))
                offset += p.numel(self.full)
                if to_workers:
                    p.write_part(self.part, value)
                else:
                    p.write_full(self.full, value)

    @torch.no_grad()
    def begin_round(self, r: int) -> Work:
        self.groups = self.partition(r)
        self._move(to_workers=True)
        for slot in self.slots:
            if slot.key is None:  # shared: every worker starts from the averaged value
                self.part[slot.name].copy_(self.full[slot.name])
        self.work = Work(self.sub, self.make_optimizer(self.sub.parameters()))
        return self.work

    @torch.no_grad()
    def end_round(self, r: int, work: Work) -> None:
        self._move(to_workers=False)
        shared = [s for s in self.slots if s.key is None]
        if shared:
            self.comm.all_reduce_mean_([self.part[s.name] for s in shared])
            for s in shared:
                self.full[s.name].copy_(self.part[s.name])

    def agreed_state(self) -> dict[str, torch.Tensor]:
        """What every rank holds alike after a round: the averaged shared tensors."""
        return {s.name: self.full[s.name] for s in self.slots if s.key is None}

    @torch.no_grad()
    def gather_for_eval(self) -> None:
        """Decentralised: owners send their neurons' entries to rank 0 (uncounted)."""
        if self.cfg.sync == "centralized" or self.size == 1:
            return
        self.groups = [[torch.arange(w)] * self.size for w in self.widths]
        me, plan = self.comm.rank, [(k, self._pieces(0, k)) for k in range(1, self.size)]
        if me == 0:
            ref = next(iter(self.full.values()))
            recvs = {
                k: torch.empty(
                    sum(p.numel(self.full) for p in ps), dtype=ref.dtype, device=ref.device
                )
                for k, ps in plan
            }
            self.comm.exchange({}, recvs)
            for k, ps in plan:
                offset = 0
                for p in ps:
                    n = p.numel(self.full)
                    p.write_full(self.full, recvs[k][offset : offset + n].view(p.shape(self.full)))
                    offset += n
        else:
            mine = next(ps for k, ps in plan if k == me)
            self.comm.exchange(
                {0: torch.cat([p.read_full(self.full).reshape(-1) for p in mine])}, {}
            )


@dataclass(frozen=True)
class Piece:
    """Entries of one tensor moving between an owner and a worker: along ``slot.key_dim``
    the neurons ``rows`` (at ``positions`` within the worker's subnet), and along the
    other dimension of a middle layer the worker's neurons ``other`` of the layer below."""

    slot: Slot
    positions: torch.Tensor
    rows: torch.Tensor
    other: torch.Tensor | None

    def shape(self, full: dict[str, torch.Tensor]) -> list[int]:
        shape = list(full[self.slot.name].shape)
        shape[self.slot.key_dim] = len(self.rows)
        if self.other is not None:
            shape[1 - self.slot.key_dim] = len(self.other)
        return shape

    def numel(self, full: dict[str, torch.Tensor]) -> int:
        return int(torch.Size(self.shape(full)).numel())

    def read_full(self, full: dict[str, torch.Tensor]) -> torch.Tensor:
        t = full[self.slot.name]
        out = t.index_select(self.slot.key_dim, self.rows.to(t.device))
        if self.other is not None:
            out = out.index_select(1 - self.slot.key_dim, self.other.to(t.device))
        return out

    def write_full(self, full: dict[str, torch.Tensor], value: torch.Tensor) -> None:
        t = full[self.slot.name]
        if self.other is None:
            t.index_copy_(self.slot.key_dim, self.rows.to(t.device), value)
        else:  # only the trained block; cross-group weights stay as they were
            t[self.rows.to(t.device)[:, None], self.other.to(t.device)[None, :]] = value

    def read_part(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        t = part[self.slot.name]
        return t.index_select(self.slot.key_dim, self.positions.to(t.device))

    def write_part(self, part: dict[str, torch.Tensor], value: torch.Tensor) -> None:
        t = part[self.slot.name]
        t.index_copy_(self.slot.key_dim, self.positions.to(t.device), value)
