"""Hydra finds launchers only in the ``hydra_plugins`` namespace; the code is in
``suite.cluster``. Importing this registers ``hydra/launcher=slurm``."""

from suite.cluster import SweepSlurmLauncher


class CommbenchSlurmLauncher(SweepSlurmLauncher):
    """``hydra/launcher=slurm``: see ``suite.cluster``."""
