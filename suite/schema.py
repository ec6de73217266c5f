"""The typed-config machinery every component's config is built on: frozen dataclasses
whose ``Literal`` fields are checked when built (``Checked``), built from plain dicts
with unknown keys refused by name (``from_dict``). Free of heavy imports."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union


class ConfigError(ValueError):
    """A configuration that cannot run; raised before any worker process starts."""


_LITERALS: dict[type, dict[str, tuple[Any, ...]]] = {}


def _literal_fields(cls: type) -> dict[str, tuple[Any, ...]]:
    if cls not in _LITERALS:
        _LITERALS[cls] = _find_literals(cls)
    return _LITERALS[cls]


def _find_literals(cls: type) -> dict[str, tuple[Any, ...]]:
    hints = typing.get_type_hints(cls)
    return {
        f.name: typing.get_args(hints[f.name])
        for f in dataclasses.fields(cls)
        if typing.get_origin(hints[f.name]) is typing.Literal
    }


class Checked:
    """A frozen config dataclass whose fields with a fixed set of values (``Literal``)
    are validated once, when it is built, however it is built."""

    def __post_init__(self) -> None:
        for name, choices in _literal_fields(type(self)).items():
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(
                    f"{type(self).__name__}.{name}={value!r} is not valid; "
                    f"choose one of {list(choices)}"
                )


T = TypeVar("T")


def from_dict(cls: type[T], values: dict[str, Any] | None, where: str = "") -> T:
    """Build a (nested) dataclass from a plain dict, refusing unknown keys by name."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or cls.__name__}; valid keys: {names}"
        )
    kwargs = {}
    for name, raw in values.items():
        kwargs[name] = _coerce(hints[name], raw, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _coerce(tp: Any, raw: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a mapping, got {raw!r}")
        return from_dict(tp, raw, where)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if raw is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, raw, where)
    if origin is tuple:
        if not isinstance(raw, list | tuple):
            raise ConfigError(f"{where} must be a list, got {raw!r}")
        (inner, _) = typing.get_args(tp)
        return tuple(_coerce(inner, v, where) for v in raw)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if raw not in choices:
            raise ConfigError(f"{where}={raw!r} is not valid; choose one of {list(choices)}")
        return raw
    if tp is Any:
        return raw
    if tp is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{where} must be true or false, got {raw!r}")
        return raw
    if tp in (int, float, str):
        if isinstance(raw, bool) or (tp is int and isinstance(raw, float)):
            raise ConfigError(f"{where} must be {tp.__name__}, got {raw!r}")
        try:
            return tp(raw)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where} must be {tp.__name__}, got {raw!r}") from err
    return raw
