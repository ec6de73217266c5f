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

A protocol is one class: subclassing :class:`Protocol` with a ``name`` registers it
(``__init_subclass__``), its ``Config`` (a frozen dataclass deriving from
:class:`ProtocolConfig`) is its config schema, and it states its bytes per round
(``paper_bytes_per_round``) or says why it does not (``bytes_not_stated``). Degenerate
cases it claims ("at one worker I am plain SGD") are ``equivalences``, which the
contract kit (``suite.testing``) checks on real ranks.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from suite.config import Checked
from suite.dist import Comm

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]

#: Every registered protocol class by name; filled by ``Protocol.__init_subclass__``.
REGISTRY: dict[str, type[Protocol[Any]]] = {}


@dataclass(frozen=True)
class ProtocolConfig(Checked):
    """The base of every protocol's ``Config``: its registry name (``Literal`` knobs are
    validated when it is built)."""

    name: str = ""


@dataclass(frozen=True)
class RoundsConfig(ProtocolConfig):
    """A protocol that takes ℓ optimizer steps per round before it communicates."""

    local_steps: int = 10


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
    """What ``supports`` and ``paper_bytes_per_round`` may look at: the built model and
    the data set's shape."""

    model: nn.Module
    data_name: str
    num_train: int
    batch_size: int
    sharding: str
    seed: int = 0
    input_shape: tuple[int, ...] = (3, 32, 32)  # one sample: (channels, height, width)
    data_epochs: float = 1.0  # the run's budget

    @property
    def image_size(self) -> int:
        return int(self.input_shape[-1])


@dataclass(frozen=True)
class Equivalence:
    """A degenerate case a protocol claims, checked by ``suite.testing`` on real ranks:
    this protocol with ``mine`` (its config overrides), run with ``run`` (overrides of
    the run: ``workers``, ``optim``, ``model``, ...), trains the same model as protocol
    ``other`` with ``theirs`` (run with ``run`` and then ``their_run``), to ``atol``;
    with ``same_bytes`` also the same bytes."""

    claim: str
    other: str
    mine: Mapping[str, Any] = field(default_factory=dict)
    theirs: Mapping[str, Any] = field(default_factory=dict)
    run: Mapping[str, Any] = field(default_factory=dict)
    their_run: Mapping[str, Any] = field(default_factory=dict)
    atol: float = 0.0
    same_bytes: bool = True


C = TypeVar("C", bound=ProtocolConfig)


class Protocol(ABC, Generic[C]):
    """Base class. A subclass sets ``name`` and ``Config`` and is registered by that."""

    name: ClassVar[str]
    Config: ClassVar[type[ProtocolConfig]]
    #: How tables name it ("local SGD"); the registry name if unset.
    title: ClassVar[str] = ""
    #: Colour and matplotlib marker of its curves in every figure (fixed, so a new
    #: protocol never recolours the others); unset: derived from a hash of the name.
    style: ClassVar[tuple[str, str] | None] = None
    #: Data-parallel protocols give each rank its own batches (``data.sharding``); a
    #: layer-parallel one, where ranks hold different parts of one network, sets this so
    #: every rank gets the same batch, and a step then consumes one batch, not S.
    same_batch_on_all_ranks: ClassVar[bool] = False
    #: Why ``paper_bytes_per_round`` is not stated, for a protocol that cannot state it.
    bytes_not_stated: ClassVar[str | None] = None
    #: Degenerate cases this protocol claims; ``suite.testing`` checks each.
    equivalences: ClassVar[tuple[Equivalence, ...]] = ()
    #: Config-group choices that come with it (``protocol=ist`` selects ``model=mlp``,
    #: ``protocol=diloco`` the paper's inner ``optim=adamw``); the command line overrides.
    selects: ClassVar[Mapping[str, str]] = {}
    #: Sequential point-to-point messages per round besides the all-reduces (cost model).
    point_to_point_hops: ClassVar[int] = 0
    #: After every round all ranks hold the same global model, every parameter equal bit
    #: for bit (BN running statistics aside: each rank's own). True for data-parallel
    #: protocols that average; False where ranks legitimately hold different models or
    #: parts of one (layer-parallel, sub-networks, gossip); those name what they do share
    #: in :meth:`agreed_state`. ``suite.testing`` compares it across real ranks.
    replicas_agree_after_round: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is None:  # a helper base without a name of its own is not a protocol
            return
        config = cls.__dict__.get("Config")
        if not (
            isinstance(config, type)
            and is_dataclass(config)
            and issubclass(config, ProtocolConfig)
            and config.__dataclass_params__.frozen  # type: ignore[attr-defined]
        ):
            raise TypeError(
                f"protocol {name!r}: Config must be a frozen dataclass deriving from "
                "protocols.base.ProtocolConfig"
            )
        default = {f.name: f.default for f in fields(config)}.get("name")
        if default != name:
            raise TypeError(f"protocol {name!r}: Config.name must default to {name!r}")
        stated = cls.paper_bytes_per_round.__func__ is not _UNSTATED  # type: ignore[attr-defined]
        if not stated and not cls.bytes_not_stated:
            raise TypeError(
                f"protocol {name!r} must state paper_bytes_per_round, or set "
                "bytes_not_stated to the reason it cannot"
            )
        other = REGISTRY.get(name)
        if other is not None and (other.__module__, other.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise TypeError(
                f"protocol name {name!r} is taken by {other.__module__}.{other.__qualname__}; "
                f"{cls.__module__}.{cls.__qualname__} needs another name"
            )
        REGISTRY[name] = cls

    def __init__(self, cfg: C) -> None:
        self.cfg = cfg
        self.comm: Comm
        self.model: nn.Module
        self.work: Work

    @classmethod
    def supports(cls, cfg: C, info: ProblemInfo, workers: int) -> str | None:
        """Why this setting cannot run (one line naming the valid choices), or None.
        Subclasses add their own checks and end with ``super().supports(...)``."""
        if isinstance(cfg, RoundsConfig) and cfg.local_steps < 1:
            return f"protocol.local_steps must be >= 1, got {cfg.local_steps}"
        return None

    @classmethod
    def paper_bytes_per_round(cls, cfg: C, info: ProblemInfo, workers: int) -> int:
        """Bytes per round, every worker's logical sends plus receives (the papers'
        convention; see ``suite.dist``), fp32.

        Part of the interface: a run records the same quantity through ``Comm`` from
        the tensors its collectives are handed, and ``suite.testing`` checks the two are
        equal on real ranks; the report's communication table is computed from it.
        """
        raise NotImplementedError(f"{cls.name}: {cls.bytes_not_stated}")

    @classmethod
    def paper_bytes_point_to_point(cls, cfg: C, info: ProblemInfo, workers: int) -> int:
        """The part of ``paper_bytes_per_round`` sent point-to-point rather than
        all-reduced (the cost model charges the two differently); 0 unless stated."""
        return 0

    @classmethod
    def compute_fraction(cls, cfg: C, info: ProblemInfo, workers: int) -> float:
        """Compute of a worker's local step relative to the full model's (cost model):
        1 for a full replica; a sub-network protocol states its largest share."""
        return 1.0

    @classmethod
    def resolvers(cls) -> dict[str, Callable[..., Any]]:
        """Config resolvers its presets use (``${name:...}``), registered with Hydra."""
        return {}

    @property
    def local_steps(self) -> int:
        """ℓ: optimizer steps per round (1 unless the Config has ``local_steps``)."""
        return self.cfg.local_steps if isinstance(self.cfg, RoundsConfig) else 1

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

    def agreed_state(self) -> dict[str, torch.Tensor]:
        """The tensors every rank holds identically after a round, by name: all parameters
        when ``replicas_agree_after_round``, else none; a protocol whose ranks share part
        of the model (averaged layers) names that part."""
        if not self.replicas_agree_after_round:
            return {}
        return dict(self.model.named_parameters())

    def stats(self) -> dict[str, float]:
        """Protocol-specific measurements, by name: every metrics row carries them as
        ``stats.<name>`` and the summary as ``protocol_stats``, each the largest over
        ranks. Every rank returns the same names; a name ending in ``_s`` is a time
        (the contract kit's resume check ignores those, as it does the row's timings)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, beyond the model's own weights."""
        return {"optimizer": self.work.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.work.optimizer.load_state_dict(state["optimizer"])


_UNSTATED = Protocol.__dict__["paper_bytes_per_round"].__func__


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
