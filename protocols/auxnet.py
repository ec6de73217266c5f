"""Layer-parallel training with auxiliary-variable networks (AuxNets)."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from protocols.base import (
    Equivalence,
    OptimizerFactory,
    ProblemInfo,
    Protocol,
    ProtocolConfig,
    Work,
    float_state,
)
from suite.dist import Comm, flatten, unflatten_into
from suite.models.flops import count_macs


def balanced_cuts(costs: list[int], parts: int) -> list[int]:
    """Start indices of ``parts`` consecutive non-empty pieces of near-equal total cost."""
    if not 1 <= parts <= len(costs):
        raise ValueError(f"cannot cut {len(costs)} units into {parts} modules")
    total, prefix, cuts = sum(costs), 0, [0]
    for i, cost in enumerate(costs):
        k = len(cuts)
        if k == parts:
            break
        # cut before unit i+1 once this piece reaches its share, keeping units for the rest
        prefix += cost
        room = len(costs) - (i + 1) >= parts - k
        if room and (prefix >= total * k / parts or len(costs) - (i + 1) == parts - k):
            cuts.append(i + 1)
    return cuts


class AuxNetwork(nn.Module):
    """A low-capacity net mapping the (augmented) raw batch to a module's input."""

    def __init__(self, in_ch: int, out_shape: tuple[int, ...], in_size: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        size = in_size
        while size > out_shape[1]:
            layers += [
                nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            size = (size + 1) // 2
        layers.append(nn.Conv2d(width, out_shape[0], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class AuxNetConfig(ProtocolConfig):
    """The choices the outline leaves open (see the class docstring)."""

    name: str = "auxnet"
    penalty: float = 10.0  # ρ at the start
    penalty_growth: float = 1.0  # ρ multiplied by this every round (a schedule)
    coupling: Literal["penalty", "lagrangian"] = "penalty"
    aux_lr: float = 0.1  # step size of the auxiliary-variable update
    aux_width: int = 16  # channels of the AuxNets
    cuts: tuple[int, ...] = ()  # unit indices where modules start; () = balanced
    warmup_epochs: float = 0.0  # data-epochs of serial backprop (pipelined) first
    finetune_epochs: float = 0.0  # data-epochs of serial backprop at the end


class AuxNet(Protocol[AuxNetConfig]):
    """Layer-parallel training with auxiliary variables (Sun, Dong, Chen, Sun, Li, Dong;
    arXiv 2112.05387; only the outline is public: shared/reference/protocols.md §3).

    The ResNet is cut into K = S consecutive modules at unit (stem, block, head)
    boundaries balanced by multiply-accumulates; rank k trains module k. Module k > 1
    reads its input z_k from an AuxNet applied to the raw batch (no per-sample variables
    are stored, augmentation works). Every rank sees the same batch and all modules run
    forward and backward at once. Module k < K minimises the penalty ρ/2·‖h_k − z_{k+1}‖²
    against the next module's auxiliary input (received from rank k+1); module K the task
    loss. The auxiliary variable takes one gradient step on its own objective, the next
    module's loss plus the penalty to h_{k−1}; the AuxNet is trained to reproduce it.
    With ``coupling=lagrangian`` a multiplier (one per feature, shared over samples)
    turns the penalty into an augmented Lagrangian on both sides: rank k minimises
    λ_k·(h_k − z_{k+1}) + ρ/2·‖h_k − z_{k+1}‖² and updates λ_k ← λ_k + ρ·(h_k − z_{k+1})
    (a mean over samples), and sends λ_k with h_k, so rank k+1's step on z_{k+1} uses
    the same λ_k (``z_target``). Neighbours exchange h_k (and λ_k) and z_k each step:
    (|h_k| + |z_{k+1}| (+ |λ_k|))·4 bytes per link, summed over links (each transfer
    counted once, as ``Comm`` counts point-to-point traffic). Evaluation chains the
    modules: the serial network.
    K = 1 is plain training.
    """

    name = "auxnet"
    Config = AuxNetConfig
    title = "AuxNet layer-parallel"
    style = ("#cc78bc", "v")
    same_batch_on_all_ranks = True
    replicas_agree_after_round = False  # rank k holds module k (and its AuxNet) only
    equivalences = (
        Equivalence(
            "a serial warm-up over the whole budget: backpropagation, as one worker",
            "single",
            mine={"warmup_epochs": 1000.0},
            # Each step is bitwise backpropagation in either memory layout; over many steps
            # channels-last's other float summation order drifts in this tiny network (as
            # it does between two one-process runs), so the chain is compared in NCHW.
            run={"train": {"channels_last": False}},
            their_run={"workers": 1},
            atol=1e-5,
            same_bytes=False,
        ),
    )

    @classmethod
    def supports(cls, cfg: AuxNetConfig, info: ProblemInfo, workers: int) -> str | None:
        units = getattr(info.model, "units", None)
        if units is None:
            return "protocol=auxnet cuts a ResNet into modules: use model=preact_resnet"
        n = len(units())
        if workers > n:
            return f"protocol=auxnet: {workers} modules but the network has only {n} units"
        if cfg.cuts and (
            len(cfg.cuts) != workers
            or cfg.cuts[0] != 0
            or list(cfg.cuts) != sorted(set(cfg.cuts))
            or cfg.cuts[-1] >= n
        ):
            return (
                f"protocol.cuts must be {workers} increasing unit indices starting at 0 "
                f"and below {n}, got {list(cfg.cuts)}"
            )
        return None

    @classmethod
    def paper_bytes_per_round(cls, cfg: AuxNetConfig, info: ProblemInfo, workers: int) -> int:
        """A round is one step: over each link k→k+1, h_k up and z_{k+1} down, a batch
        of the cut's activations each (and λ_k, one per feature, with the Lagrangian);
        each transfer counted once. Serial (warm-up, fine-tune) steps move activations
        up and input gradients down: the same, without λ."""
        if workers == 1:
            return 0
        cuts, shapes = cls.plan(cfg, info, workers)
        total = 0
        for k in range(1, workers):
            features = math.prod(shapes[cuts[k]])
            total += 2 * info.batch_size * features
            total += features if cfg.coupling == "lagrangian" else 0
        return 4 * total

    @classmethod
    def plan(
        cls, cfg: AuxNetConfig, info: ProblemInfo, workers: int
    ) -> tuple[list[int], list[tuple[int, ...]]]:
        """Where the modules start (the configured cuts, else balanced by MACs) and the
        input shape of every unit, probed in eval mode with autograd off, so BatchNorm's
        running statistics do not move."""
        model = info.model
        units: list[nn.Module] = model.units()  # type: ignore[operator]
        device = next(model.parameters()).device
        x = torch.zeros(2, *info_shape(info), device=device)
        shapes, costs, h = [], [], x
        was_training = model.training
        model.eval()
        with torch.no_grad():
            macs = count_macs(model, x, per_module=True)
            for u in units:
                shapes.append(tuple(h.shape[1:]))
                h = u(h)
                costs.append(sum(macs.get(q, 0) for q in u.modules()))
        model.train(was_training)
        return list(cfg.cuts) or balanced_cuts(costs, workers), shapes

    def setup(
        self, model: nn.Module, comm: Comm, make_optimizer: OptimizerFactory, info: ProblemInfo
    ) -> None:
        self.model, self.comm, self.make_optimizer = model, comm, make_optimizer
        self.k, self.size = comm.rank, comm.world_size
        units: list[nn.Module] = model.units()  # type: ignore[operator]
        device = next(model.parameters()).device
        self.nhwc = any(  # the model computes in channels-last (train.channels_last)
            p.dim() == 4
            and not p.is_contiguous()
            and p.is_contiguous(memory_format=torch.channels_last)
            for p in model.parameters()
        )
        self.cuts, shapes = self.plan(self.cfg, info, self.size)
        bounds = [*self.cuts, len(units)]
        self.modules_ = [nn.Sequential(*units[a:b]) for a, b in itertools.pairwise(bounds)]
        self.module = self.modules_[self.k]
        self.in_shape = shapes[bounds[self.k]]
        self.out_shape = shapes[bounds[self.k + 1]] if self.k + 1 < self.size else None
        channels, size = info_shape(info)[0], info_shape(info)[-1]
        self.aux: AuxNetwork | None = None
        params = list(self.module.parameters())
        if self.k > 0:
            with torch.random.fork_rng(devices=[]):  # the same AuxNet start on every run
                torch.manual_seed(info.seed * 1000 + self.k)
                width = self.cfg.aux_width
                self.aux = AuxNetwork(channels, self.in_shape, size, width).to(device)
            params += list(self.aux.parameters())
        self.rho = self.cfg.penalty
        # λ_k, one per feature of h_k (shared over samples: no per-sample state is kept);
        # it lives on rank k and travels to rank k+1 with h_k every step.
        self.multiplier: torch.Tensor | None = None
        if self.cfg.coupling == "lagrangian" and self.out_shape is not None:
            self.multiplier = torch.zeros(self.out_shape, device=device)
        self.times = {"aux": 0.0, "forward": 0.0, "backward": 0.0}
        self.gap = torch.zeros(())
        self._mark = 0.0
        # Serial phases, in steps (every rank sees every batch: one batch per step).
        steps = info.num_train / info.batch_size
        self.serial_until = round(self.cfg.warmup_epochs * steps)
        self.serial_from = (
            round((info.data_epochs - self.cfg.finetune_epochs) * steps)
            if self.cfg.finetune_epochs > 0
            else math.inf
        )
        self.step = 0
        self._input: torch.Tensor | None = None
        self.work = Work(self.module, make_optimizer(params), self._loss)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        serial = self.step < self.serial_until or self.step >= self.serial_from
        self.step += 1
        return self._serial(x, y) if serial and self.size > 1 else self._objective(x, y)

    def _serial(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Plain backpropagation through the chained modules, pipelined over the ranks:
        activations go up in the forward pass, input gradients come down after backward."""
        batch = x.shape[0]
        t0 = time.perf_counter()
        if self.k == 0:
            inp = x
        else:
            wire = self._buffer(batch, self.in_shape, x.device)
            self.comm.exchange({}, {self.k - 1: wire})
            inp = self._unwire(wire).requires_grad_(True)
        self._input = inp if self.k > 0 else None
        h = self.module(inp)
        if self.k + 1 < self.size:
            assert self.out_shape is not None
            wire = self._buffer(batch, self.out_shape, x.device)
            self.comm.exchange({self.k + 1: self._wire(h.detach())}, {})
            self.comm.exchange({}, {self.k + 1: wire})
            grad = self._unwire(wire)
            loss = (h * grad).sum()  # backward of this surrogate is backprop of the chain
        else:
            loss = F.cross_entropy(h, y)
        self.times["forward"] += time.perf_counter() - t0
        self._mark = time.perf_counter()
        return loss

    # The serial phase sends activations and gradients in the layout the model computes
    # in (NHWC under train.channels_last): the receiving module then sees the same memory
    # layout as in one process, so the pipeline is backpropagation to the last bit.
    def _wire(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as a contiguous buffer in the model's layout."""
        return t.permute(0, 2, 3, 1).contiguous() if self.nhwc and t.dim() == 4 else t.contiguous()

    def _buffer(self, batch: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A receive buffer for a batch of ``shape`` (C, H, W) in the model's layout."""
        if self.nhwc and len(shape) == 3:
            return torch.empty(batch, shape[1], shape[2], shape[0], device=device)
        return torch.empty(batch, *shape, device=device)

    def _unwire(self, buffer: torch.Tensor) -> torch.Tensor:
        """The (N, C, H, W) tensor a received buffer holds (a view, no copy)."""
        return buffer.permute(0, 3, 1, 2) if self.nhwc and buffer.dim() == 4 else buffer

    def _objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The local loss of this rank's module (and AuxNet) on the shared batch."""
        t0 = time.perf_counter()
        z = self.aux(x) if self.aux is not None else x
        t1 = time.perf_counter()
        z_in = z.detach().requires_grad_(self.aux is not None)
        h = self.module(z_in)
        h_prev, lam_prev, z_next = self._exchange(h, z, x.shape[0])
        if z_next is not None:
            gap = h - z_next
            self.gap = gap.detach().pow(2).mean()  # a tensor: no host sync per step
            if self.multiplier is not None:  # augmented Lagrangian: λ·gap + ρ/2·gap²
                lam = self.multiplier
                loss = 0.5 * self.rho * (gap + lam / self.rho).pow(2).mean()
                self.multiplier = lam + self.rho * gap.detach().mean(0)  # dual ascent
            else:
                loss = 0.5 * self.rho * gap.pow(2).mean()
        else:
            loss = F.cross_entropy(h, y)
        t2 = time.perf_counter()
        if self.aux is not None:
            assert h_prev is not None
            # One gradient step on the auxiliary variable's objective: this module's loss
            # plus the coupling to the previous module's output; the AuxNet regresses it.
            (grad,) = torch.autograd.grad(loss, z_in, retain_graph=True)
            target = z_target(z_in, grad, h_prev, lam_prev, self.rho, self.cfg.aux_lr)
            loss = loss + F.mse_loss(z, target)
        self.times["aux"] += t1 - t0
        self.times["forward"] += t2 - t1
        self._mark = time.perf_counter()
        return loss

    def _exchange(
        self, h: torch.Tensor, z: torch.Tensor, batch: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Neighbours swap, in one batch of point-to-point transfers: h_k (with the
        multiplier λ_k under ``coupling=lagrangian``) up to rank k+1, z_k down to rank
        k−1. Returns h_{k−1}, λ_{k−1} and z_{k+1} (None where there is no neighbour)."""
        sends: dict[int, torch.Tensor] = {}
        recvs: dict[int, torch.Tensor] = {}
        lagrangian = self.cfg.coupling == "lagrangian"
        if self.k + 1 < self.size:
            up = [h.detach()] + ([self.multiplier] if self.multiplier is not None else [])
            sends[self.k + 1] = flatten(up)
            assert self.out_shape is not None
            recvs[self.k + 1] = torch.empty(batch, *self.out_shape, device=h.device)
        if self.k > 0:
            sends[self.k - 1] = z.detach().contiguous()
            numel = batch * math.prod(self.in_shape)
            extra = math.prod(self.in_shape) if lagrangian else 0
            recvs[self.k - 1] = torch.empty(numel + extra, device=h.device)
        self.comm.exchange(sends, recvs)
        h_prev = lam_prev = z_next = None
        if self.k > 0:
            flat = recvs[self.k - 1]
            numel = batch * math.prod(self.in_shape)
            h_prev = flat[:numel].view(batch, *self.in_shape)
            if lagrangian:
                lam_prev = flat[numel:].view(*self.in_shape)
        if self.k + 1 < self.size:
            z_next = recvs[self.k + 1]
        return h_prev, lam_prev, z_next

    def after_backward(self, work: Work) -> None:
        self.times["backward"] += time.perf_counter() - self._mark
        if self._input is not None:  # a serial step: hand the input gradient down
            assert self._input.grad is not None
            self.comm.exchange({self.k - 1: self._wire(self._input.grad)}, {})
            self._input = None

    def end_round(self, r: int, work: Work) -> None:
        self.rho *= self.cfg.penalty_growth

    def stats(self) -> dict[str, float]:
        """Seconds spent in this rank's AuxNet forward, module forward (with the exchange)
        and backward; the penalty gap ‖h_k − z_{k+1}‖² of the last step (0 on rank K)."""
        return {
            "aux_s": self.times["aux"],
            "forward_s": self.times["forward"],
            "backward_s": self.times["backward"],
            "gap": float(self.gap),
        }

    @torch.no_grad()
    def gather_for_eval(self) -> None:
        """Every module's weights to rank 0, which then holds the serial network."""
        if self.size == 1:
            return
        if self.k == 0:
            recvs = {
                k: torch.empty(
                    sum(t.numel() for t in state), device=state[0].device, dtype=state[0].dtype
                )
                for k, m in enumerate(self.modules_)
                if k > 0 and (state := float_state(m))
            }
            self.comm.exchange({}, recvs)
            for k, flat in recvs.items():
                unflatten_into(flat, float_state(self.modules_[k]))
        else:
            self.comm.exchange({0: flatten(float_state(self.module))}, {})

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.work.optimizer.state_dict(),
            "rho": self.rho,
            "step": self.step,
            "aux": self.aux.state_dict() if self.aux is not None else None,
            "multiplier": self.multiplier,
            "times": dict(self.times),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.work.optimizer.load_state_dict(state["optimizer"])
        self.rho, self.multiplier = state["rho"], state["multiplier"]
        self.step = int(state["step"])
        if self.aux is not None:
            self.aux.load_state_dict(state["aux"])
        self.times = dict(state["times"])


def z_target(
    z: torch.Tensor,
    grad: torch.Tensor,
    h_prev: torch.Tensor,
    lam_prev: torch.Tensor | None,
    rho: float,
    step: float,
) -> torch.Tensor:
    """One gradient step on the auxiliary variable z_k's own per-sample objective:

        f_k(z) + mean_f[λ_{k−1}·(h_{k−1} − z)] + ρ/2·mean_f (h_{k−1} − z)²

    whose gradient is ∂f_k/∂z + (ρ·(z − h_{k−1}) − λ_{k−1}) / F, F the features per
    sample; ``grad`` is ∂(batch-mean loss)/∂z, so ∂f_k/∂z = batch · grad. Without a
    multiplier (``coupling=penalty``) λ = 0."""
    pull = rho * (z - h_prev)
    if lam_prev is not None:
        pull = pull - lam_prev
    return (z - step * (grad * z.shape[0] + pull / z[0].numel())).detach()


def info_shape(info: ProblemInfo) -> tuple[int, int, int]:
    """(channels, height, width) of one input sample."""
    channels, height, width = info.input_shape
    return (channels, height, width)
