"""The fork server that ranks are forked from (``suite.spawn``), kept free of heavy
imports so that ``python -m suite.run`` can start it first thing (:func:`start_early`):
the server imports torch while the launcher imports its own.

The server imports this module first (it heads :data:`PRELOAD`) and so leaves the
launcher's process group: a signal sent to that group (a terminal's hangup, ``timeout``,
a scheduler's SIGTERM) then reaches the launcher alone, which stops its ranks in order,
as when ranks were spawned. The server still ends when
the launcher does (its pipe from the launcher closes), and its ranks with it
(``die_with_parent``). Anywhere but in a fork server, importing this does nothing.
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: What the server imports once: this module, then the third-party modules that
#: dominate a rank's start (measured beside torch: torch._dynamo 3.1 s, which torch
#: imports when the first optimizer is built). The digits are read without
#: scikit-learn (``suite.data.datasets.digits_file``). The suite's own modules are
#: imported in each rank, so a rank sees the code and the plugins installed when it
#: starts. One that is not installed is skipped.
PRELOAD = [
    "suite._forkserver",
    "torch",
    "torch.distributed",
    "torch._dynamo",
    "numpy",
]

if sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules:
    os.setpgid(0, 0)


def context() -> Any:
    """The multiprocessing context ranks start in: this fork server with
    :data:`PRELOAD` where Python has one (Linux, macOS), else spawn. Never plain fork
    (the caller may hold threads)."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # read when the server first starts
    return ctx


def start_early(argv: list[str]) -> None:
    """Start the server now, in the background, for a command line that will start
    ranks on this machine: not for ``--help``/``--cfg``-style queries, nor for a SLURM
    submission (whose ranks start on the nodes)."""
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return
    if any(a.startswith("hydra/launcher=") and "checked" not in a for a in argv):
        return
    if context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()
