"""The optimizer registry: every ``Optimizer`` subclass with a ``name`` registers itself.

An optimizer is one frozen config dataclass: its fields are its knobs and their
defaults (the only place they are written: ``optim=<name>`` is stored in Hydra's
ConfigStore from it), and :meth:`Optimizer.build` makes the torch optimizer. Every
optimizer shares the learning-rate schedule over the whole budget (``lr``,
``weight_decay``, ``schedule``, ``milestones``, ``gamma``). A run's identity holds
exactly the chosen optimizer's fields.

An optimizer from an installed package is found through the entry-point group
``commbench.optimizers`` (``[project.entry-points."commbench.optimizers"] rmsprop =
"my_package.rmsprop"``): loading it imports the module, which registers its class. One that
fails to import is left out, said once, and named when chosen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from suite.plugins import Registry
from suite.schema import Checked

if TYPE_CHECKING:
    import torch

#: The entry-point group plugins register their optimizer modules under.
ENTRY_POINT_GROUP = "commbench.optimizers"
#: Every optimizer, by name.
REGISTRY: Registry[Optimizer] = Registry("optimizer", "optim", ENTRY_POINT_GROUP, "sgd")


@dataclass(frozen=True)
class Optimizer(Checked):
    """A torch optimizer with the suite's learning-rate schedule (a fraction of the
    budget at each milestone for ``step``). Subclasses set ``name`` and add their own
    knobs; they register themselves."""

    name: str = ""
    lr: float = 0.05
    weight_decay: float = 5e-4
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the budget (step schedule)
    gamma: float = 0.1

    #: Fields that must be finite and >= 0 (checked before any process starts).
    non_negative: ClassVar[tuple[str, ...]] = ("lr", "weight_decay", "gamma")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            REGISTRY.add(cls)

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The torch optimizer over ``params`` at this config's ``lr``."""
        raise NotImplementedError

    def problems(self) -> list[str]:
        """What is wrong with these numbers (each message names its key), if anything."""
        found = []
        for key in self.non_negative:
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                found.append(f"optim.{key} must be a finite number >= 0, got {value}")
        return found


@dataclass(frozen=True)
class SGD(Optimizer):
    """torch's SGD with momentum; the step schedule drops ``lr`` by ``gamma`` at each
    milestone."""

    name: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False

    non_negative: ClassVar[tuple[str, ...]] = (*Optimizer.non_negative, "momentum")

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        import torch

        return torch.optim.SGD(
            params,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )


@dataclass(frozen=True)
class AdamW(Optimizer):
    """torch's AdamW (decoupled weight decay), by default on a cosine schedule."""

    name: str = "adamw"
    lr: float = 0.001
    weight_decay: float = 0.01
    schedule: Literal["step", "cosine", "constant"] = "cosine"
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8

    non_negative: ClassVar[tuple[str, ...]] = (*Optimizer.non_negative, "eps")

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        import torch

        betas = (float(self.betas[0]), float(self.betas[1]))
        return torch.optim.AdamW(
            params, lr=self.lr, betas=betas, eps=self.eps, weight_decay=self.weight_decay
        )

    def problems(self) -> list[str]:
        found = super().problems()
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            found.append(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        return found


def load_all() -> dict[str, type[Optimizer]]:
    """Every optimizer, installed plugins loaded (once)."""
    return REGISTRY.load_all()


def broken() -> dict[str, str]:
    """Optimizer plugins that failed to load, with why."""
    return REGISTRY.broken()


def get(name: str) -> type[Optimizer]:
    """The optimizer registered under ``name``."""
    return REGISTRY.get(name)


def parse_config(values: dict[str, Any] | None, recorded: bool = False) -> Optimizer:
    """``{name: ..., knobs...}`` → that optimizer's config (``Registry.parse``)."""
    return REGISTRY.parse(values, recorded)


def fields_of(name: str) -> set[str] | None:
    """The fields of the optimizer registered as ``name`` (None if none is)."""
    return REGISTRY.fields_of(name)
