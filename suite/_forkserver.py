"""The fork server that ranks are forked from (``suite.spawn``), kept free of heavy
imports so that ``python -m suite.run`` can start it first thing (:func:`start_early`):
the server imports torch while the launcher imports its own.

Imported by the server itself (it is the first name in :data:`PRELOAD`):
The server leaves the launcher's process group: a signal sent to that group (a
terminal's hangup, ``timeout``, a scheduler's SIGTERM) then reaches the launcher alone,
which stops its ranks in order, as when ranks were spawned. The server still ends when
the launcher does (its pipe from the launcher closes), and its ranks with it
(``die_with_parent``). Anywhere but in a fork server, importing this does nothing.
"""

from __future__ import annotations

import os
import sys

#: What the server imports once: this module, then the third-party modules that
#: dominate a rank's start (measured beside torch: torch._dynamo 3.1 s, which torch
#: imports when the first optimizer is built; scikit-learn's data sets 1.5 s, for the
#: digits). The suite's own modules are imported in each rank, so a rank sees the code
#: and the plugins installed when it starts. One that is not installed is skipped.
PRELOAD = [
    "suite._forkserver",
    "torch",
    "torch.distributed",
    "torch._dynamo",
    "numpy",
    "sklearn.datasets",
]

if sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules:
    os.setpgid(0, 0)


def available() -> bool:
    """Whether this Python has a fork server (Linux, macOS); else ranks are spawned."""
    import multiprocessing as mp

    return "forkserver" in mp.get_all_start_methods()


def start_early(argv: list[str]) -> None:
    """Start the server now, in the background, for a command line that will start
    ranks on this machine: not for ``--help``/``--cfg``-style queries, nor for a SLURM
    submission (whose ranks start on the nodes)."""
    if not available() or any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return
    if any(a.startswith("hydra/launcher=") and "checked" not in a for a in argv):
        return
    import multiprocessing as mp
    from multiprocessing import forkserver

    mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()
