"""What every kind of plugin shares: a plugin that fails to load is said once per run,
by the process the user started, never again by its workers; and the registry of an
axis whose components are config classes (optimizers, models)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
from importlib import metadata
from typing import Any, Generic, TypeVar

from suite.schema import ConfigError, from_dict

C = TypeVar("C")

#: The broken plugins reported so far (``protocol=x,optim=y``), so workers do not repeat them.
REPORTED = "COMMBENCH_BROKEN_PLUGINS_REPORTED"


def started_by_multiprocessing() -> bool:
    """A rank of a local run: its launcher reported already. (While it starts, before its
    parent is known, the bootstrap marks the process as inheriting; it may import the
    launcher's main module then, which loads the plugins.)"""
    current = multiprocessing.current_process()
    return multiprocessing.parent_process() is not None or getattr(current, "_inheriting", False)


def warn_broken(plugin: str, message: str) -> None:
    """Say ``message`` (``plugin`` failed to load) on stderr, unless this process's
    launcher said it already."""
    said = set(filter(None, os.environ.get(REPORTED, "").split(",")))
    if plugin not in said and not started_by_multiprocessing():
        print(f"warning: {message}", file=sys.stderr)
        os.environ[REPORTED] = ",".join(sorted(said | {plugin}))  # inherited by its workers


class Registry(Generic[C]):
    """The components of one axis (optimizers, models): config dataclasses with a
    ``name``, each registered when its class is defined, plus those of installed
    packages, found through the entry-point group ``group``; one that fails to import
    is left out, said once, and named when chosen. ``key`` is the axis's config key
    (``optim``, ``model``)."""

    def __init__(self, kind: str, key: str, group: str, default: str) -> None:
        self.kind, self.key, self.group, self.default = kind, key, group, default
        self.classes: dict[str, type[C]] = {}
        self._broken: dict[str, str] = {}
        self._loaded = False

    def add(self, cls: type[C]) -> None:
        """Register ``cls`` under its ``name``; a name another class holds is refused
        (a plugin must not silently replace a built-in: its runs would take the
        built-in's folder names). Checked when first used: that it is a frozen dataclass
        whose ``name`` field defaults to that name."""
        name = cls.name  # type: ignore[attr-defined]
        other = self.classes.get(name)
        where = f"{cls.__module__}.{cls.__qualname__}"
        if other is not None and f"{other.__module__}.{other.__qualname__}" != where:
            raise TypeError(
                f"{self.kind} name {name!r} is taken by {other.__module__}."
                f"{other.__qualname__}; {where} needs another name"
            )
        self.classes[name] = cls

    def _check(self) -> None:
        for name, cls in self.classes.items():
            params = getattr(cls, "__dataclass_params__", None)
            fields = {f.name: f.default for f in dataclasses.fields(cls)} if params else {}  # type: ignore[arg-type]
            if params is None or not params.frozen or fields.get("name") != name:
                raise TypeError(
                    f"{self.kind} {cls.__module__}.{cls.__qualname__} must be a "
                    f"@dataclass(frozen=True) whose field name defaults to {name!r}"
                )

    def load_all(self) -> dict[str, type[C]]:
        """Every registered class, installed plugins loaded (once)."""
        if not self._loaded:
            self._loaded = True
            for entry in metadata.entry_points(group=self.group):
                try:
                    entry.load()
                except Exception as err:
                    package = entry.dist.name if entry.dist is not None else "an unknown package"
                    self._broken[entry.name] = (
                        f"{type(err).__name__}: {err} (entry point {entry.name} = "
                        f"{entry.value} of {package})"
                    )
                    warn_broken(
                        f"{self.key}={entry.name}",
                        f"the {self.kind} plugin {entry.name!r} failed to load and is left "
                        f"out: {self._broken[entry.name]}",
                    )
        self._check()
        return self.classes

    def broken(self) -> dict[str, str]:
        """Plugins that failed to load, with why."""
        self.load_all()
        return dict(self._broken)

    def get(self, name: str) -> type[C]:
        """The class registered under ``name``."""
        classes = self.load_all()
        if name in self._broken:
            raise ConfigError(
                f"{self.key}={name} is a plugin that failed to load: {self._broken[name]}; "
                "reinstall or remove that package"
            )
        if name not in classes:
            raise ConfigError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(classes))}")
        return classes[name]

    def parse(self, values: dict[str, Any] | None, recorded: bool = False) -> C:
        """``{name: ..., knobs...}`` → that component's frozen config; unknown keys are
        refused by name. ``recorded``: a run folder's ``config.yaml`` written before this
        axis had components held every component's knobs; the chosen one's are read and
        the rest ignored."""
        values = dict(values or {})
        cls = self.get(str(values.get("name", self.default)))
        if recorded:
            known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
            values = {k: v for k, v in values.items() if k in known}
        return from_dict(cls, values, f"{self.key} ({cls.name})")  # type: ignore[attr-defined]

    def fields_of(self, name: str) -> set[str] | None:
        """The fields of the component registered as ``name`` (None if none is)."""
        cls = self.load_all().get(name)
        return {f.name for f in dataclasses.fields(cls)} if cls is not None else None  # type: ignore[arg-type]
