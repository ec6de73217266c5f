"""Local SGD: every worker trains a full replica ℓ steps, then parameters are averaged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from protocols.base import (
    Equivalence,
    ProblemInfo,
    Protocol,
    RoundsConfig,
    Work,
    float_state,
    nbytes,
)


@dataclass(frozen=True)
class LocalSGDConfig(RoundsConfig):
    """ℓ and what happens to the optimizer state at a sync."""

    name: str = "localsgd"
    local_steps: int = 10
    optimizer_state: Literal["keep", "average", "reset"] = "keep"


class LocalSGD(Protocol[LocalSGDConfig]):
    """Periodic model averaging (Stich 2019; Lin et al. 2020), ResIST's baseline.

    Each round every worker takes ℓ local SGD steps on its own batches; then all
    parameters and floating-point buffers (BN running statistics, when the model keeps
    them) are averaged in one all-reduce. Optimizer state at a sync is kept per worker
    (``keep``, like torch's ``PeriodicModelAverager``), averaged too (``average``: the
    optimizer's state tensors travel as well, e.g. SGD's momentum buffers), or reset
    (``reset``: the ResIST code rebuilds its optimizer every round).
    Per round, summed over S workers: 2·S·|θ|·4 bytes (+ the optimizer state's tensors
    for ``average``). ℓ = 1 with ``keep`` is exactly data parallel SGD.
    """

    name = "localsgd"
    Config = LocalSGDConfig
    title = "local SGD"
    style = ("#de8f05", "s")
    equivalences = (
        Equivalence("at one worker: plain SGD", "single", run={"workers": 1}),
        Equivalence(
            "l = 1 with the optimizer state kept: data parallel SGD",
            "ddp",
            mine={"local_steps": 1},
            run={"model": {"bn": "none"}},
            atol=1e-6,
        ),
    )

    @classmethod
    def paper_bytes_per_round(cls, cfg: LocalSGDConfig, info: ProblemInfo, workers: int) -> int:
        if workers == 1:
            return 0
        # optimizer_state=average also averages the optimizer's state tensors; which exist
        # depends on the optimizer (SGD with momentum: one buffer per parameter; none
        # with momentum 0; AdamW: two), so it is stated for SGD with momentum only.
        momentum = [p for p in info.model.parameters() if p.requires_grad]
        extra = nbytes(momentum) if cfg.optimizer_state == "average" else 0
        return 2 * workers * (nbytes(float_state(info.model)) + extra)

    def end_round(self, r: int, work: Work) -> None:
        tensors = float_state(self.model)
        if self.cfg.optimizer_state == "average":
            tensors += [
                v
                for state in work.optimizer.state.values()
                for v in state.values()
                if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() > 0
            ]
        self.comm.all_reduce_mean_(tensors)
        if self.cfg.optimizer_state == "reset":
            work.optimizer.state.clear()
