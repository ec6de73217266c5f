"""The configs of the suite's two Hydra launchers, kept free of heavy imports: Hydra
imports every ``hydra_plugins`` package at the start of any Hydra app in the
environment, and ours registers these there. The launchers themselves (``suite.sweep``,
``suite.cluster``, which import torch) are imported when Hydra instantiates one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class CheckedLauncherConf:
    """``hydra/launcher=checked`` (the default): Hydra's basic launcher, one run after
    the other, after every point was checked."""

    _target_: str = "hydra_plugins.commbench_launcher.CommbenchCheckedLauncher"


@dataclass
class SlurmConf(SlurmQueueConf):
    """``hydra/launcher=slurm``: submitit's SLURM settings plus the worker layout."""

    _target_: str = "hydra_plugins.commbench_launcher.CommbenchSlurmLauncher"
    # The layout is derived from each sweep point's `workers`; these two describe the nodes.
    gpus_per_node: int | None = 0  # GPUs per node (0: CPU nodes; one task per GPU otherwise)
    max_tasks_per_node: int | None = None  # CPU nodes: at most this many workers per node
    tasks_per_node: int | None = None  # derived; leave unset
    nodes: int | None = None  # derived; leave unset
    timeout_min: int = 60
    cpus_per_task: int | None = 1  # also the intra-op threads of each worker
    mem_gb: int | None = 16  # per node
    partition: str | None = None
    account: str | None = None
    max_num_timeout: int = 3  # requeues after the time limit (runs resume from checkpoints)
    signal_delay_s: int = 120  # the signal comes this long before the limit
    array_parallelism: int = 256
    setup: list[str] | None = field(default_factory=list)  # lines run before srun
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # other sbatch flags
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"


def store() -> None:
    """Register ``hydra/launcher=checked`` and ``hydra/launcher=slurm`` (idempotent)."""
    configs = ConfigStore.instance()
    configs.store(group="hydra/launcher", name="checked", node=CheckedLauncherConf)
    configs.store(group="hydra/launcher", name="slurm", node=SlurmConf)


store()
