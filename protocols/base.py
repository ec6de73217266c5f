"""The protocol interface: what a worker trains in a round, and what is communicated.

A protocol owns no loop, no launching and no environment reads; ``suite.train`` runs
the one training loop for all of them and calls these hooks:

    setup(model, comm, make_optimizer, info)    once, after rank 0's weights are broadcast
    for each round r:
        work = begin_round(r)                   module + optimizer this worker trains now
        ℓ times: forward, backward, after_backward(work), optimizer step
        end_round(r, work)                      aggregation
    gather_for_eval()                           every rank, before rank 0 evaluates
    eval_model()                                the full global model for evaluation

All communication goes through ``Comm``, which counts bytes and time.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from suite.dist import Comm

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


@dataclass
class Work:
    """What a worker trains during a round, and the loss it minimises."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The task loss of the module's output, unless the protocol set a local objective."""
        if self.objective is not None:
            return self.objective(x, y)
        return F.cross_entropy(self.module(x), y)


@dataclass(frozen=True)
class ProblemInfo:
    """What ``supports`` may look at: the built model and the data set's shape."""

    model: nn.Module
    data_name: str
    num_train: int
    batch_size: int
    sharding: str
    seed: int = 0
    image_size: int = 32
    data_epochs: float = 1.0  # the run's budget


class Protocol(ABC):
    """Base class; subclasses set ``name`` and ``Config`` and register themselves."""

    name: ClassVar[str]
    Config: ClassVar[type]
    #: Data-parallel protocols give each rank its own batches (``data.sharding``); a
    #: layer-parallel one, where ranks hold different parts of one network, sets this so
    #: every rank gets the same batch, and a step then consumes one batch, not S.
    same_batch_on_all_ranks: ClassVar[bool] = False

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.comm: Comm
        self.model: nn.Module
        self.work: Work

    @classmethod
    def supports(cls, cfg: Any, info: ProblemInfo, workers: int) -> str | None:
        """Why this setting cannot run (a message naming the valid choices), or None.
        Subclasses add their own checks and end with ``super().supports(...)``."""
        local_steps = getattr(cfg, "local_steps", 1)
        if local_steps < 1:
            return f"protocol.local_steps must be >= 1, got {local_steps}"
        return None

    @classmethod
    def paper_bytes_per_round(cls, cfg: Any, model: nn.Module, workers: int) -> int:
        """Bytes per round, all workers' sends plus receives (the papers' convention).

        Must equal what a run records through ``Comm`` (tests check it on real ranks);
        the report's communication table is computed from it.
        """
        raise NotImplementedError(f"{cls.name} does not state its bytes per round")

    #: Sequential point-to-point messages per round besides the all-reduces (cost model).
    point_to_point_hops: int = 0

    @classmethod
    def paper_bytes_point_to_point(cls, cfg: Any, model: nn.Module, workers: int) -> int:
        """The part of ``paper_bytes_per_round`` sent point-to-point rather than
        all-reduced (the cost model charges the two differently); 0 unless stated."""
        return 0

    @property
    def local_steps(self) -> int:
        """ℓ: optimizer steps per round."""
        return int(getattr(self.cfg, "local_steps", 1))

    def setup(
        self, model: nn.Module, comm: Comm, make_optimizer: OptimizerFactory, info: ProblemInfo
    ) -> None:
        """Take the (already synchronised) model; by default a full replica with one optimizer."""
        self.model, self.comm, self.make_optimizer = model, comm, make_optimizer
        self.work = Work(model, make_optimizer(model.parameters()))

    def begin_round(self, r: int) -> Work:
        """The module and optimizer this worker trains in round ``r`` (default: the replica)."""
        return self.work

    def after_backward(self, work: Work) -> None:
        """Gradient synchronisation point; a no-op unless the protocol syncs gradients."""

    def end_round(self, r: int, work: Work) -> None:
        """Aggregation at the end of round ``r``."""

    def gather_for_eval(self) -> None:
        """Called on every rank before rank 0 evaluates (uncounted, off the clock): bring
        whatever rank 0 lacks of the global model. Full replicas need nothing."""

    def eval_model(self) -> nn.Module:
        """The full global model, as a user would deploy it."""
        return self.model

    def stats(self) -> dict[str, float]:
        """Protocol-specific measurements for the summary (reduced by max over ranks)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, beyond the model's own weights."""
        return {"optimizer": self.work.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.work.optimizer.load_state_dict(state["optimizer"])


def nbytes(tensors: Iterable[torch.Tensor]) -> int:
    """Total bytes of a list of tensors."""
    return sum(t.numel() * t.element_size() for t in tensors)


def float_state(module: nn.Module) -> list[torch.Tensor]:
    """Parameters and floating-point buffers (BN running stats): the model's trained state.

    The objects themselves (not ``.data`` views, which are new objects on every access),
    so callers can tell tensors apart by identity; modify them under ``torch.no_grad()``.
    """
    tensors: list[torch.Tensor] = list(module.parameters())
    tensors += [b for b in module.buffers() if b.is_floating_point()]
    return tensors
