"""What every kind of plugin (protocols, optimizers) shares: a plugin that fails to load
is said once per run, by the process the user started, never again by its workers."""

from __future__ import annotations

import multiprocessing
import os
import sys

#: The broken plugins reported so far (``protocol=x,optim=y``), so workers do not repeat them.
REPORTED = "COMMBENCH_BROKEN_PLUGINS_REPORTED"


def started_by_multiprocessing() -> bool:
    """A rank of a local run: its launcher reported already. (While it starts, before its
    parent is known, the bootstrap marks the process as inheriting; it may import the
    launcher's main module then, which loads the plugins.)"""
    current = multiprocessing.current_process()
    return multiprocessing.parent_process() is not None or getattr(current, "_inheriting", False)


def warn_broken(plugin: str, message: str) -> None:
    """Say ``message`` (``plugin`` failed to load) on stderr, unless this process's
    launcher said it already."""
    said = set(filter(None, os.environ.get(REPORTED, "").split(",")))
    if plugin not in said and not started_by_multiprocessing():
        print(f"warning: {message}", file=sys.stderr)
        os.environ[REPORTED] = ",".join(sorted(said | {plugin}))  # inherited by its workers
