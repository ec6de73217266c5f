"""Imported by the fork server that ranks are forked from (``suite.spawn.PRELOAD``).

The server leaves the launcher's process group: a signal sent to that group (a
terminal's hangup, ``timeout``, a scheduler's SIGTERM) then reaches the launcher alone,
which stops its ranks in order, as when ranks were spawned. The server still ends when
the launcher does (its pipe from the launcher closes), and its ranks with it
(``die_with_parent``). Anywhere but in a fork server, importing this does nothing.
"""

from __future__ import annotations

import os
import sys

if sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules:
    os.setpgid(0, 0)
