"""The protocol registry: every ``Protocol`` subclass with a ``name`` registers itself.

Shipped protocols are the modules of this package (found, not listed); a protocol from
an installed package is found through the entry-point group ``commbench.protocols``
(``[project.entry-points."commbench.protocols"] my_method = "my_package.my_module"``):
loading the entry point imports the module, which registers its class.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib import metadata
from typing import Any

from protocols.base import REGISTRY, ProblemInfo, Protocol, ProtocolConfig, Work
from suite.config import ConfigError, from_dict

__all__ = [
    "REGISTRY",
    "ProblemInfo",
    "Protocol",
    "ProtocolConfig",
    "Work",
    "build",
    "get",
    "load_all",
    "parse_config",
]

#: The entry-point group plugins register their protocol modules under.
ENTRY_POINT_GROUP = "commbench.protocols"
_NOT_PROTOCOLS = {"base"}
_loaded = False


def load_all() -> dict[str, type[Protocol[Any]]]:
    """Import every shipped protocol module and every installed plugin (once); returns
    the registry. A plugin that fails to import is an error naming it."""
    global _loaded
    if not _loaded:
        load_shipped()
        for entry, err in load_plugins():
            raise ConfigError(
                f"the protocol plugin {entry.name!r} ({entry.value}) failed to load: "
                f"{type(err).__name__}: {err}"
            ) from err
        _loaded = True
    return REGISTRY


def load_shipped() -> None:
    """Import every protocol module of this package (each registers its class)."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_PROTOCOLS and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def load_plugins() -> list[tuple[metadata.EntryPoint, Exception]]:
    """Load every installed plugin's entry point; those that failed, with their errors
    (``load_all`` raises on the first; ``python -m suite.list`` lists them all)."""
    failed = []
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as err:
            failed.append((entry, err))
    return failed


def get(name: str) -> type[Protocol[Any]]:
    """The protocol class registered under ``name``."""
    registry = load_all()
    if name not in registry:
        raise ConfigError(f"unknown protocol {name!r}; valid: {', '.join(sorted(registry))}")
    return registry[name]


def parse_config(values: dict[str, Any]) -> Any:
    """``{name: ..., knobs...}`` → that protocol's frozen Config (with a ``name`` field)."""
    values = dict(values)
    name = values.pop("name", None)
    if name is None:
        raise ConfigError(f"protocol.name is missing; valid: {', '.join(sorted(load_all()))}")
    return from_dict(get(name).Config, {"name": name, **values}, "protocol")


def build(cfg: ProtocolConfig) -> Protocol[Any]:
    """Instantiate the protocol for a parsed Config."""
    if not isinstance(cfg, ProtocolConfig):
        raise TypeError("build() takes a parsed protocol Config")
    return get(cfg.name)(cfg)
