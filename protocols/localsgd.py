"""Local SGD: every worker trains a full replica ℓ steps, then parameters are averaged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from protocols.base import Protocol, Work, float_state, nbytes


class LocalSGD(Protocol):
    """Periodic model averaging (Stich 2019; Lin et al. 2020), ResIST's baseline.

    Each round every worker takes ℓ local SGD steps on its own batches; then all
    parameters and floating-point buffers (BN running statistics, when the model keeps
    them) are averaged in one all-reduce. Optimizer state at a sync is kept per worker
    (``keep``, like torch's ``PeriodicModelAverager``), averaged too (``average``: the
    momentum buffers travel as well), or reset (``reset``: the ResIST code rebuilds its
    optimizer every round).
    Per round, summed over S workers: 2·S·|θ|·4 bytes (+ the same again for
    ``average`` with momentum). ℓ = 1 with ``keep`` is exactly data parallel SGD.
    """

    name = "localsgd"

    @dataclass(frozen=True)
    class Config:
        name: str = "localsgd"
        local_steps: int = 10
        optimizer_state: Literal["keep", "average", "reset"] = "keep"

    @classmethod
    def paper_bytes_per_round(cls, cfg: Any, model: nn.Module, workers: int) -> int:
        if workers == 1:
            return 0
        # optimizer_state=average also averages SGD's momentum buffers (one per trained
        # parameter); with optim.momentum=0 there are none, and a run records less.
        momentum = [p for p in model.parameters() if p.requires_grad]
        extra = nbytes(momentum) if cfg.optimizer_state == "average" else 0
        return 2 * workers * (nbytes(float_state(model)) + extra)

    def end_round(self, r: int, work: Work) -> None:
        tensors = float_state(self.model)
        if self.cfg.optimizer_state == "average":
            tensors += [
                s["momentum_buffer"]
                for s in work.optimizer.state.values()
                if isinstance(s.get("momentum_buffer"), torch.Tensor)
            ]
        self.comm.all_reduce_mean_(tensors)
        if self.cfg.optimizer_state == "reset":
            work.optimizer.state.clear()
