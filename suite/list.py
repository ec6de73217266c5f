"""``python -m suite.list``: what is installed and how to choose it on the command line.

Protocols, data sets, models and optimizers (shipped and from plugins: name, the package
it comes from, its knobs with their defaults), and every installed plugin that failed
to load, with its error. Exits 0 either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any

import protocols
from suite import architectures, datasources, optimizers
from suite.plugins import Registry


def knobs(values: Mapping[str, Any]) -> str:
    """``a=1 b=x`` (or ``(no knobs)``)."""
    return " ".join(f"{k}={v}" for k, v in values.items()) or "(no knobs)"


def distribution_of(module: str, plugins: Mapping[str, str]) -> str:
    """The installed package a protocol's module comes from."""
    top = module.split(".")[0]
    if top in ("protocols", "suite"):
        return "commbench"
    if top in plugins:
        return plugins[top]
    found = metadata.packages_distributions().get(top)
    return found[0] if found else f"module {module} (not an installed package)"


def protocol_lines(plugins: Mapping[str, str]) -> list[str]:
    """One line per registered protocol (after ``load_shipped`` and ``load_plugins``)."""
    lines = []
    for name, cls in sorted(protocols.REGISTRY.items()):
        config = {f.name: f.default for f in dataclasses.fields(cls.Config) if f.name != "name"}
        title = cls.title or name
        source = distribution_of(cls.__module__, plugins)
        lines.append(f"  {name:<14} {title!r} from {source}: {knobs(config)}")
    return lines


def section(title: str, rows: Iterable[str]) -> list[str]:
    rows = list(rows)
    return [f"{title} ({len(rows)}):", *(rows or ["  (none)"]), ""]


def component_lines(registry: Registry[Any], plugins: Mapping[str, str]) -> list[str]:
    """One line per registered model or optimizer: its knobs with their defaults, and
    the package it comes from."""
    lines = []
    for name, cls in sorted(registry.load_all().items()):
        config = {k: v for k, v in dataclasses.asdict(cls()).items() if k != "name"}
        source = distribution_of(cls.__module__, plugins)
        lines.append(f"  {name:<14} from {source}: {knobs(config)}")
    return lines


def report() -> str:
    """The whole listing."""
    protocols.load_shipped()
    failed = protocols.load_plugins()  # a broken plugin is listed, not raised
    plugins = {}
    groups = [protocols.ENTRY_POINT_GROUP, datasources.ENTRY_POINT_GROUP]
    groups.append(architectures.ENTRY_POINT_GROUP)
    for group in [*groups, optimizers.ENTRY_POINT_GROUP]:
        for entry in metadata.entry_points(group=group):
            dist = getattr(entry, "dist", None)
            if dist is not None:
                plugins[entry.value.split(":")[0].split(".")[0]] = dist.metadata["Name"]
    lines = section("protocols (protocol=<name>, protocol.<knob>=...)", protocol_lines(plugins))
    for registry, title in (
        (datasources.REGISTRY, "data sets"),
        (architectures.REGISTRY, "models"),
        (optimizers.REGISTRY, "optimizers"),
    ):
        key = registry.key
        rows = component_lines(registry, plugins)
        lines += section(f"{title} ({key}=<name>, {key}.<knob>=...)", rows)
    lines += section(
        f"broken plugins (entry points of {protocols.ENTRY_POINT_GROUP}, "
        f"{datasources.ENTRY_POINT_GROUP}, {architectures.ENTRY_POINT_GROUP} and "
        f"{optimizers.ENTRY_POINT_GROUP} that failed to load)",
        [
            *(f"  {e.name} ({e.value}): {type(err).__name__}: {err}" for e, err in failed),
            *(f"  data={name}: {why}" for name, why in datasources.REGISTRY.broken().items()),
            *(f"  model={name}: {why}" for name, why in architectures.REGISTRY.broken().items()),
            *(f"  optim={name}: {why}" for name, why in optimizers.broken().items()),
        ],
    )
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    print(report(), end="")


if __name__ == "__main__":
    main()
