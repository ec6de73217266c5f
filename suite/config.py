"""Typed configuration: Hydra's ``DictConfig`` stops at ``suite.run``; code below it sees these.

Each component gets only its own part (``TrainConfig`` for the budget, ...). The knobs
of the protocol, the data set, the model and the optimizer are parsed by the chosen
one's own frozen config class, looked up in its registry by name (``protocols``,
``suite.datasources``, ``suite.architectures``, ``suite.optimizers``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from suite.architectures import REGISTRY as models_registry
from suite.architectures import Model, PreActResNetConfig
from suite.datasources import LOCATION_FIELDS, Dataset, Digits
from suite.datasources import REGISTRY as data_registry
from suite.optimizers import REGISTRY as optimizers_registry
from suite.optimizers import SGD, Optimizer
from suite.plugins import Registry
from suite.schema import Checked as Checked
from suite.schema import ConfigError as ConfigError
from suite.schema import from_dict as from_dict


@dataclass(frozen=True)
class TrainConfig(Checked):
    """The budget, identical in meaning for every protocol.

    ``data_epochs`` counts training samples processed by all workers together, in units
    of the training-set size: 160 data-epochs at 4 workers is 40 epochs per worker.
    """

    data_epochs: float = 10.0
    eval_every: float = 1.0  # data-epochs between evaluations (at round boundaries)
    deterministic: bool = False
    checkpoint: bool = True  # save state as it goes; resume a run that stopped
    checkpoint_every: float = 1.0  # data-epochs between checkpoints (and at a stop signal)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: the forward pass under autocast
    channels_last: bool = True  # conv weights and image batches in NHWC (no effect on MLPs)
    # torch.compile the trained module (a ResNet block by block: suite.compiled); off by
    # default: on this CPU it is slower (docs/performance.md)
    compile: bool = False


@dataclass(frozen=True)
class LaunchConfig(Checked):
    """How worker processes are started; none of this changes results."""

    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda if present
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: NCCL on GPUs, else gloo
    threads: int = 0  # intra-op threads per worker; 0: cores // workers
    timeout_s: float = 1800.0  # collective timeout (a hang guard; crashes are caught sooner)
    progress: bool = True  # tqdm on an interactive terminal
    link: str | None = None  # emulated cluster: each worker's own link, e.g. "1gbit" (root)
    # Resume even though code, library versions or threads changed since the first attempt
    # (recorded in attempts/<n>.json); otherwise such a resume is refused.
    allow_changed_env: bool = False
    # No rank progressing for this long: warn naming the rank that holds the others up;
    # for stall_timeout_s: end the run failed (0: never). Local runs (suite.heartbeat).
    stall_warn_s: float = 120.0
    stall_timeout_s: float = 600.0


@dataclass(frozen=True)
class LoggerConfig(Checked):
    """Where metrics also go, besides ``metrics.jsonl`` (always the source of truth)."""

    name: Literal["none", "tensorboard", "wandb", "csv"] = "none"
    project: str = "commbench"  # wandb's project
    group: str | None = None  # wandb's group; a multirun sets it to its sweep's name
    mode: Literal["offline", "online"] = "offline"  # wandb: offline needs no network


@dataclass(frozen=True)
class RunConfig:
    """One run: a protocol on a model and data set with a number of workers and a seed."""

    protocol: Any = None  # the protocol's own frozen Config (a protocols.base.ProtocolConfig)
    workers: int = 2
    seed: int = 0
    model: Model = field(default_factory=PreActResNetConfig)  # suite.architectures
    data: Dataset = field(default_factory=Digits)  # suite.datasources
    optim: Optimizer = field(default_factory=SGD)  # the chosen one's config (suite.optimizers)
    train: TrainConfig = field(default_factory=TrainConfig)
    launcher: LaunchConfig = field(default_factory=LaunchConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    results_dir: str = "results"
    force: bool = False

    @property
    def protocol_name(self) -> str:
        return str(self.protocol.name)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-able dict (the protocol's name included)."""
        d = dataclasses.asdict(self)
        d["protocol"] = {"name": self.protocol_name, **dataclasses.asdict(self.protocol)}
        # What the model family says of itself, recorded so that a report read where a
        # plugin model is not installed still knows (train.channels_last, below).
        d["model"]["convolutional"] = type(self.model).convolutional
        return d

    def semantic_dict(self) -> dict[str, Any]:
        """Everything that can change a result (see :func:`semantic_config`)."""
        return semantic_config(self.to_dict())

    def run_name(self) -> str:
        """Folder name: readable prefix plus a hash of the semantic config."""
        digest = hashlib.sha256(
            json.dumps(self.semantic_dict(), sort_keys=True).encode()
        ).hexdigest()[:10]
        return (
            f"{self.data.name}-{self.model.tag}-{self.protocol_name}"
            f"-w{self.workers}-s{self.seed}-{digest}"
        )


def with_part(cfg: RunConfig, key: str, changes: Mapping[str, Any]) -> RunConfig:
    """``cfg`` with its section ``key`` changed. For the data set, the model and the
    optimizer a ``name`` other than the chosen one's switches to that component (its
    defaults, then ``changes``), as ``data=``, ``model=`` or ``optim=`` does."""
    current = getattr(cfg, key)
    registries: list[Registry[Any]] = [data_registry, models_registry, optimizers_registry]
    registry = {r.key: r for r in registries}.get(key)
    if registry is not None and changes.get("name", current.name) != current.name:
        return dataclasses.replace(cfg, **{key: registry.parse(dict(changes))})
    return dataclasses.replace(cfg, **{key: dataclasses.replace(current, **changes)})


def semantic_config(config: dict[str, Any]) -> dict[str, Any]:
    """Everything in a run's config (``RunConfig.to_dict()``, or a run folder's
    ``config.yaml``) that can change its result: the run folder's hash and the report's
    grouping both use this, so two runs differ in a name exactly when they may differ
    in a result.

    Dropped: where results go and how processes are started (``results_dir``,
    ``force``, ``launcher`` except the device and an emulated link, which change
    timings), whether state is checkpointed, where the data lives (``data.root``,
    ``data.download``), and fields the chosen model family, optimizer or data set
    never reads.
    """
    d = copy.deepcopy(config)
    launcher = d.pop("launcher", None) or {}
    for key in ("results_dir", "force", "logger"):
        d.pop(key, None)
    train = d.get("train", {})
    for key in ("checkpoint", "checkpoint_every"):
        train.pop(key, None)
    data = d.get("data", {})
    for key in LOCATION_FIELDS:
        data.pop(key, None)
    if data.get("downsample", 1) == 1:  # added later: runs before it keep their names
        data.pop("downsample", None)
    if not train.get("compile", False):  # likewise
        train.pop("compile", None)
    # A run folder written before data sets, models and optimizers were components holds
    # every one's knobs: only the chosen one's count (all of them for one not installed).
    recorded_conv = d.get("model", {}).pop("convolutional", None)  # not a knob: a fact
    registries: list[Registry[Any]] = [data_registry, models_registry, optimizers_registry]
    for registry in registries:
        part = d.get(registry.key, {})
        known = registry.fields_of(part.get("name", registry.default))
        for key in set(part) - (known or set(part)):
            part.pop(key)
    model = models_registry.load_all().get(d.get("model", {}).get("name", ""))
    convolutional = model.convolutional if model is not None else recorded_conv
    if convolutional is False:  # nothing to lay out: the same either way
        train.pop("channels_last", None)
    d["device"] = launcher.get("device", "auto")
    if launcher.get("backend", "auto") != "auto":  # a chosen backend changes timings
        d["backend"] = launcher["backend"]
    if launcher.get("link") is not None:  # an emulated link changes every timing
        d["link"] = launcher["link"]
    return d


def flatten_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config → ``{"optim.lr": 0.05, ...}`` (lists and tuples become tuples)."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = tuple(value) if isinstance(value, list | tuple) else value
    return flat
