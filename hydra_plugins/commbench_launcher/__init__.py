"""Hydra instantiates launchers only from the ``hydra_plugins`` namespace, and imports
every package there when any Hydra app starts. So this one stays light: it registers the
launchers' configs (``suite.launchers``) and defines thin launchers that import the real
ones, ``suite.sweep.CheckedLauncher`` (``hydra/launcher=checked``, the default) and
``suite.cluster.SweepSlurmLauncher`` (``hydra/launcher=slurm``), with torch and the
suite, only when Hydra instantiates them."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher

import suite.launchers  # noqa: F401  (registers the two launchers' configs)


class _Deferred(Launcher):
    """A launcher that builds ``implementation`` ("module:Class") when instantiated and
    hands every call to it."""

    implementation = ""

    def __init__(self, **params: Any) -> None:
        module, name = self.implementation.split(":")
        self.launcher: Launcher = getattr(importlib.import_module(module), name)(**params)

    def setup(self, **kwargs: Any) -> None:
        self.launcher.setup(**kwargs)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        return self.launcher.launch(job_overrides, initial_job_idx)


class CommbenchSlurmLauncher(_Deferred):
    """``hydra/launcher=slurm``: see ``suite.cluster``."""

    implementation = "suite.cluster:SweepSlurmLauncher"


class CommbenchCheckedLauncher(_Deferred):
    """``hydra/launcher=checked``: see ``suite.sweep``."""

    implementation = "suite.sweep:CheckedLauncher"
