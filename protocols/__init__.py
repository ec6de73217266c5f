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
from suite.plugins import warn_broken

__all__ = [
    "REGISTRY",
    "ProblemInfo",
    "Protocol",
    "ProtocolConfig",
    "Work",
    "broken",
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
    the registry. A plugin that fails to import is left out of it (``broken()``) and
    said once on stderr: it must not break every other protocol."""
    global _loaded
    if not _loaded:
        load_shipped()
        for entry, err in load_plugins():
            _broken_plugin(entry, err)
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


#: Plugins whose entry point failed to load: name → (the error, where it came from).
_BROKEN: dict[str, tuple[str, str]] = {}


def _broken_plugin(entry: metadata.EntryPoint, err: Exception) -> None:
    package = entry.dist.name if entry.dist is not None else "an unknown package"
    error = f"{type(err).__name__}: {err}"
    _BROKEN[entry.name] = (error, f"entry point {entry.name} = {entry.value} of {package}")
    warn_broken(
        f"protocol={entry.name}",
        f"the protocol plugin {entry.name!r} ({entry.value}, from {package}) "
        f"failed to load and is left out: {error}",
    )


def broken() -> dict[str, str]:
    """Plugins that failed to load, with why: a refusal of ``protocol=<name>`` names it."""
    load_all()
    return {
        name: f"protocol={name} is a plugin that failed to load: {error} ({where}); "
        "reinstall or remove that package"
        for name, (error, where) in _BROKEN.items()
    }


def get(name: str) -> type[Protocol[Any]]:
    """The protocol class registered under ``name``."""
    registry = load_all()
    if name in broken():
        raise ConfigError(broken()[name])
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
