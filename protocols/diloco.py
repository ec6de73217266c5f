"""DiLoCo: local SGD with an inner and an outer optimizer."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class DiLoCoConfig(RoundsConfig):
    """H inner steps per round (the run's optimizer, AdamW in the paper) and the outer
    Nesterov SGD."""

    name: str = "diloco"
    local_steps: int = 10  # H: 500 in the paper
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    outer_nesterov: bool = True


class DiLoCo(Protocol[DiLoCoConfig]):
    """DiLoCo (Douillard et al., "DiLoCo: Distributed Low-Communication Training of
    Language Models", arXiv 2311.08105, 2023).

    Every worker starts a round from the global parameters θ and takes H inner steps
    with its own optimizer (the run's ``optim``: AdamW, as the paper, unless chosen),
    whose state stays on the worker across rounds. Then the parameters are averaged in
    one all-reduce, and the outer gradient Δ = θ − mean_k θ_k (the averaged change,
    with the sign that makes a plain SGD outer step of lr 1 local SGD) is applied to θ
    by an outer SGD with Nesterov momentum (lr 0.7, momentum 0.9 in the paper); every
    worker holds θ and its outer state, so nothing else is sent. Floating-point buffers
    (BN running statistics) are averaged with the parameters, as in local SGD.
    Per round, summed over S workers: 2·S·|θ|·4 bytes, as local SGD.
    Outer lr 1 without momentum is local SGD with the optimizer state kept.
    """

    name = "diloco"
    Config = DiLoCoConfig
    title = "DiLoCo"
    style = ("#ca9161", "X")
    selects = {"optim": "adamw"}  # the paper's inner optimizer (optim=sgd for SGD)
    equivalences = (
        Equivalence(
            "outer SGD with lr 1 and no momentum: local SGD (optimizer state kept)",
            "localsgd",
            mine={"outer_lr": 1.0, "outer_momentum": 0.0, "outer_nesterov": False},
            theirs={"optimizer_state": "keep"},
            atol=1e-5,
        ),
    )

    @classmethod
    def supports(cls, cfg: DiLoCoConfig, info: ProblemInfo, workers: int) -> str | None:
        if cfg.outer_lr <= 0:
            return f"protocol.outer_lr must be > 0, got {cfg.outer_lr}"
        if cfg.outer_nesterov and cfg.outer_momentum <= 0:
            return "protocol.outer_nesterov=true needs protocol.outer_momentum > 0"
        return super().supports(cfg, info, workers)

    @classmethod
    def paper_bytes_per_round(cls, cfg: DiLoCoConfig, info: ProblemInfo, workers: int) -> int:
        return 2 * workers * nbytes(float_state(info.model)) if workers > 1 else 0

    def setup(
        self, model: nn.Module, comm: Comm, make_optimizer: OptimizerFactory, info: ProblemInfo
    ) -> None:
        super().setup(model, comm, make_optimizer, info)  # the inner optimizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        in_params = {id(p) for p in self.params}
        self.others = [t for t in float_state(model) if id(t) not in in_params]
        self.theta = [nn.Parameter(p.detach().clone()) for p in self.params]
        self.outer = torch.optim.SGD(
            self.theta,
            lr=self.cfg.outer_lr,
            momentum=self.cfg.outer_momentum,
            nesterov=self.cfg.outer_nesterov,
        )

    @torch.no_grad()
    def end_round(self, r: int, work: Work) -> None:
        self.comm.all_reduce_mean_(self.params + self.others)  # mean_k θ_k, BN buffers
        for global_, mean in zip(self.theta, self.params, strict=True):
            global_.grad = global_.detach() - mean.detach()  # Δ = θ − mean_k θ_k
        self.outer.step()
        for global_, p in zip(self.theta, self.params, strict=True):
            p.copy_(global_)

    def state_dict(self) -> dict[str, object]:
        return {
            "optimizer": self.work.optimizer.state_dict(),
            "outer": self.outer.state_dict(),
            "theta": [t.detach().clone() for t in self.theta],
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        super().load_state_dict(state)
        self.outer.load_state_dict(state["outer"])  # type: ignore[arg-type]
        with torch.no_grad():
            for t, value in zip(self.theta, state["theta"], strict=True):  # type: ignore[call-overload]
                t.copy_(value)
