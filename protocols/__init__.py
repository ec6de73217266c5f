"""Protocol registry: ``name`` → class; module name = registry key = config file name.

Adding a protocol is one file here plus ``suite/conf/protocol/<name>.yaml``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from protocols.auxnet import AuxNet
from protocols.base import ProblemInfo, Protocol, Work
from protocols.ddp import DDP
from protocols.ist import IST
from protocols.localsgd import LocalSGD
from protocols.resist import ResIST
from protocols.single import Single
from suite.config import ConfigError, from_dict

REGISTRY: dict[str, type[Protocol]] = {
    p.name: p for p in (AuxNet, DDP, IST, LocalSGD, ResIST, Single)
}

__all__ = ["REGISTRY", "ProblemInfo", "Protocol", "Work", "build", "parse_config"]


def get(name: str) -> type[Protocol]:
    """The protocol class registered under ``name``."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown protocol {name!r}; valid: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def parse_config(values: dict[str, Any]) -> Any:
    """``{name: ..., knobs...}`` → that protocol's frozen Config (with a ``name`` field)."""
    values = dict(values)
    name = values.pop("name", None)
    if name is None:
        raise ConfigError(f"protocol.name is missing; valid: {', '.join(sorted(REGISTRY))}")
    return from_dict(get(name).Config, {"name": name, **values}, "protocol")


def build(cfg: Any) -> Protocol:
    """Instantiate the protocol for a parsed Config."""
    name = getattr(cfg, "name", None)
    if not dataclasses.is_dataclass(cfg) or not isinstance(name, str):
        raise TypeError("build() takes a parsed protocol Config")
    return get(name)(cfg)
