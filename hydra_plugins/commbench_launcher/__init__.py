"""Hydra instantiates launchers only from the ``hydra_plugins`` namespace; the code is in
``suite.cluster`` (``hydra/launcher=slurm``) and ``suite.sweep`` (``hydra/launcher=checked``,
the default). Importing this registers both."""

from suite.cluster import SweepSlurmLauncher
from suite.sweep import CheckedLauncher


class CommbenchSlurmLauncher(SweepSlurmLauncher):
    """``hydra/launcher=slurm``: see ``suite.cluster``."""


class CommbenchCheckedLauncher(CheckedLauncher):
    """``hydra/launcher=checked``: see ``suite.sweep``."""
