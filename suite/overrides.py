"""The command line's overrides, checked before Hydra composes them.

Hydra refuses an unknown group option (``protocol=foo``) or an unknown key without
``+``/``++`` (``optim.lrr=0.1``) before ``suite.run``'s ``main`` runs, with a
multi-line message and exit status 1. :func:`check_overrides` finds the same mistakes
first, for every point of a sweep, and raises a one-line :class:`ConfigError` naming
the valid choices and the nearest one ("did you mean ..."), so that every
configuration error exits 2 before any run starts.
"""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import protocols
from suite import architectures, datasources, optimizers
from suite.config import ConfigError

CONF = Path(__file__).parent / "conf"
#: Flags that only select the mode; any other flag (--cfg, --help, -cd, ...) is Hydra's.
MODE_FLAGS = ("-m", "--multirun")
_ABSENT = object()


def check_overrides(argv: list[str]) -> None:
    """Refuse (``ConfigError``, one line) an override naming a group option or a key that
    does not exist, at every point of a sweep; nothing is run or written."""
    if any(a.startswith("-") and a not in MODE_FLAGS for a in argv):
        return  # Hydra's own flags (--help, --cfg, --config-dir, ...): Hydra decides
    args = [a for a in argv if a not in MODE_FLAGS]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except HydraException as err:
        raise ConfigError(f"invalid override: {_one_line(err)}") from None
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(f"file://{CONF}"))
    groups = set(_groups(loader, ""))
    chosen = [o for o in overrides if o.key_or_group in groups and not o.is_delete()]
    for override in chosen:
        _check_options(loader, override)
    picked = {id(o) for o in chosen}
    fixed = [
        str(o.input_line) for o in overrides if id(o) not in picked and not o.is_sweep_override()
    ]
    for point in itertools.product(*(_choices(o) for o in chosen)):
        cfg = _compose(loader, list(point), point)
        _check_keys(cfg, overrides, point)
        _compose(loader, [*point, *fixed], point)  # anything else Hydra would refuse


def _groups(loader: ConfigLoaderImpl, parent: str) -> list[str]:
    """Every config group, nested ones as ``hydra/launcher``."""
    found = []
    for name in loader.list_groups(parent):
        path = f"{parent}/{name}" if parent else name
        found += [path, *_groups(loader, path)]
    return found


def _values(override: Override) -> list[str]:
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def _prefix(override: Override) -> str:
    return {"ADD": "+", "FORCE_ADD": "++"}.get(override.type.name, "")


def _choices(override: Override) -> list[str]:
    """The override of each value it sweeps over, as it would be given alone."""
    return [f"{override.get_key_element()}={v}" for v in _values(override)]  # with its +


def _check_options(loader: ConfigLoaderImpl, override: Override) -> None:
    group = override.key_or_group
    options = loader.get_group_options(group)
    for value in _values(override):
        if group == "protocol" and value in protocols.broken():
            raise ConfigError(protocols.broken()[value])
        for registry in (datasources.REGISTRY, architectures.REGISTRY, optimizers.REGISTRY):
            if group == registry.key and value in registry.broken():
                registry.get(value)  # raises, naming the plugin and its error
        if value not in options:
            given = f"{_prefix(override)}{group}="
            raise ConfigError(
                f"{given}{value} is not an option of {group}; valid: {', '.join(options)}"
                + _did_you_mean(value, options, given)
            )


def _did_you_mean(word: str, choices: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


def _compose(loader: ConfigLoaderImpl, overrides: list[str], point: tuple[str, ...]) -> Any:
    try:
        return loader.load_configuration("config", overrides, run_mode=RunMode.RUN)
    except (HydraException, OmegaConfBaseException) as err:
        where = f" (with {' '.join(point)})" if point else ""
        raise ConfigError(f"{_one_line(err)}{where}") from None


def _one_line(err: BaseException) -> str:
    return " ".join(line.strip() for line in str(err).splitlines()[:3] if line.strip())


def _check_keys(cfg: DictConfig, overrides: list[Override], point: tuple[str, ...]) -> None:
    """An override without ``+``/``++`` must name a key the composed config has."""
    added = {o.key_or_group for o in overrides if o.type.name in ("ADD", "FORCE_ADD")}
    for o in overrides:
        key = o.key_or_group
        if o.type.name != "CHANGE" or key.startswith("hydra.") or key in added or "/" in key:
            continue
        if OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT:
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
        if not isinstance(node, DictConfig):  # the section itself is unknown
            parent, leaf, node = "", key.split(".")[0], cfg
        valid = [str(k) for k in node if str(k) != "hydra"]
        where = f" with {' '.join(point)}" if point else ""
        if key.startswith("protocol.") and not point:
            where = f" with protocol={cfg.protocol.name}"
        full = [f"{parent}.{k}" if parent else k for k in valid]
        close = difflib.get_close_matches(leaf, valid, n=1)
        hint = f"; did you mean {full[valid.index(close[0])]}?" if close else ""
        if parent == "protocol":
            hint += f" (++{key}=... sets a knob only some swept protocols have)"
        raise ConfigError(
            f"{key} is not a key of the config{where}; valid keys in {parent or 'the config'}: "
            f"{', '.join(valid)}{hint}"
        )
