"""A run's problem: its data set, its model and its protocol, below both the launcher and
the training loop.

The launcher asks :func:`check` before any process starts (a missing data set, or a
setting the protocol refuses, is a one-line ``ConfigError``); every rank of the loop
calls :func:`load_problem` and :func:`build_protocol`. ``protocols`` depends on the
suite's core (``suite.config``, ``suite.dist``, ``suite.models``, ``suite.data``), which
never imports it; the modules above the core that need a protocol's class look it up in
the registry: this one (for the loop and the launcher's checks), and the command line's
checks and sweeps (``suite.overrides``, ``suite.sweep``), the report, ``suite.list``,
the contract kit, the cost model and the benchmarks. ``tests/test_structure.py`` holds
that no import cycle forms.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import protocols
from protocols.base import ProblemInfo, Protocol
from suite import architectures, datasources, optimizers
from suite.config import ConfigError, RunConfig, from_dict
from suite.data import ImageDataset, load_dataset

MAX_WORKERS = 1024


@dataclass
class Problem:
    """The data set, the shared model (seeded identically on every rank) and what a
    protocol is told about them."""

    data: ImageDataset
    model: nn.Module
    info: ProblemInfo


def parse_run_config(values: dict[str, Any], recorded: bool = False) -> RunConfig:
    """A resolved config dict (Hydra's, minus ``hydra``) → :class:`RunConfig`, the
    protocol's, data set's, model's and optimizer's knobs each parsed by its own config
    class.
    ``recorded``: the dict is a run folder's ``config.yaml`` (``optimizers.parse_config``
    reads the knobs of older records leniently)."""
    values = dict(values)
    values.pop("hydra", None)
    proto = values.pop("protocol", None)
    if not isinstance(proto, dict):
        valid = ", ".join(sorted(protocols.load_all()))
        raise ConfigError(f"protocol must be chosen, e.g. protocol=ddp; valid: {valid}")
    optim, model = values.pop("optim", None), values.pop("model", None)
    if isinstance(model, dict) and "convolutional" in model:  # recorded by to_dict: a fact
        model = {k: v for k, v in model.items() if k != "convolutional"}
    data = values.pop("data", None)
    cfg = from_dict(RunConfig, values)
    return dataclasses.replace(
        cfg,
        protocol=protocols.parse_config(proto),
        data=datasources.REGISTRY.parse(data, recorded=recorded),
        model=architectures.parse_config(model, recorded=recorded),
        optim=optimizers.parse_config(optim, recorded=recorded),
    )


def problem_info(cfg: RunConfig, ds: ImageDataset, model: nn.Module) -> ProblemInfo:
    """What the protocol may know about the problem."""
    return ProblemInfo(
        model,
        ds.name,
        ds.num_train,
        cfg.data.batch_size,
        cfg.data.sharding,
        cfg.seed,
        tuple(ds.train_x.shape[1:]),
        cfg.train.data_epochs,
    )


def build(cfg: RunConfig, ds: ImageDataset, device: torch.device) -> nn.Module:
    """The shared model, seeded identically on every rank."""
    torch.manual_seed(cfg.seed)
    shape = tuple(ds.train_x.shape[1:])
    model = cfg.model.build(ds.in_channels, ds.num_classes, shape).to(device)
    if cfg.train.channels_last and model_is_conv(model):
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def model_is_conv(model: nn.Module) -> bool:
    """Whether a memory layout for images applies (any 2-d convolution)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def load_problem(cfg: RunConfig, device: torch.device) -> Problem:
    """Load the data set and build the model for ``cfg`` on ``device``."""
    ds = load_dataset(cfg.data)
    model = build(cfg, ds, device)
    return Problem(ds, model, problem_info(cfg, ds, model))


def build_protocol(cfg: RunConfig) -> Protocol[Any]:
    """The protocol object of ``cfg`` (its class from the registry)."""
    return protocols.build(cfg.protocol)


def check(cfg: RunConfig) -> None:
    """Refuse a run that cannot work, before any process starts: an impossible worker
    count, a data set that is missing or too small, a setting the protocol refuses."""
    if not 1 <= cfg.workers <= MAX_WORKERS:
        raise ConfigError(f"workers must be an integer in 1..{MAX_WORKERS}, got {cfg.workers!r}")
    if cfg.data.batch_size < 1 or cfg.data.eval_batch_size < 1:
        raise ConfigError("data.batch_size and data.eval_batch_size must be >= 1")
    if cfg.data.downsample < 1:
        raise ConfigError(f"data.downsample must be >= 1 (1: as stored), got {cfg.data.downsample}")
    check_numbers(cfg)
    problem = load_problem(cfg, torch.device("cpu"))  # a missing data set fails here
    ds = problem.data
    per_worker = ds.num_train // cfg.workers if cfg.data.sharding == "disjoint" else ds.num_train
    if per_worker < cfg.data.batch_size:
        raise ConfigError(
            f"workers={cfg.workers} with data.batch_size={cfg.data.batch_size} leaves each worker "
            f"{per_worker} of {cfg.data.name}'s {ds.num_train} training samples, less than one "
            "batch; use fewer workers, a smaller batch, or data.sharding=full"
        )
    reason = protocols.get(cfg.protocol.name).supports(cfg.protocol, problem.info, cfg.workers)
    if reason:
        raise ConfigError(reason)


def check_numbers(cfg: RunConfig) -> None:
    """Numbers that parse but would fail inside the workers (nan, inf, a negative rate or
    timeout), refused by name before any process starts."""
    train, optim, launcher = cfg.train, cfg.optim, cfg.launcher
    positive = {
        "train.data_epochs": train.data_epochs,
        "train.eval_every": train.eval_every,
        "train.checkpoint_every": train.checkpoint_every,
        "launcher.timeout_s": launcher.timeout_s,
    }
    for name, value in positive.items():
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a finite number > 0, got {value}")
    for problem in optim.problems():
        raise ConfigError(problem)
    if launcher.threads < 0:
        raise ConfigError(
            f"launcher.threads must be >= 0 (0: the cores shared out), got {launcher.threads}"
        )
