"""Stalls are not silent: each rank beats, the local launcher watches.

Every rank of a local run writes ``<run>/heartbeat/rank<r>`` (its step and pid) at most
once a second while it trains (rank 0 also while it evaluates). A rank that stops (a
SIGSTOP, a debugger, a hung filesystem) stalls the others in their next collective, and
then no rank beats: after ``launcher.stall_warn_s`` the launcher warns, naming the rank
that holds the others up, and after ``launcher.stall_timeout_s`` it ends the run
``failed`` with that name, long before the collective timeout. A run that stalled and
then went on records ``stalled_s`` and ``timings_valid: false`` in its summary: its
times are not a clean measurement.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

from suite.record import Summary

log = logging.getLogger("suite")

FOLDER = "heartbeat"


class Heartbeat:
    """One rank's beat: ``beat(step)`` writes the file when a second has passed."""

    def __init__(self, folder: Path | None, rank: int, pid: int, every_s: float = 1.0) -> None:
        self.path = None if folder is None else folder / f"rank{rank}"
        self.pid, self.every_s = pid, every_s
        self.last = -math.inf

    def __call__(self, step: int) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            with contextlib.suppress(OSError):  # a full disk must not stop training
                self.path.write_text(f"{step} {self.pid}\n")


class Stalled(Exception):
    """No rank made progress for ``launcher.stall_timeout_s``."""


#: Linux process states (``/proc/<pid>/stat``) that mean a rank is not waiting on its peers.
STATES = {"T": "is stopped (SIGSTOP or a debugger)", "t": "is stopped by a debugger"}
BUSY = {"R": "is running", "D": "waits on a device or disk (uninterruptible)"}


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class StallWatch:
    """The launcher's side: ``poll()`` (called while it waits) warns, and raises
    ``Stalled``, when no rank has beaten for ``warn_s`` / ``fail_s`` (0: never)."""

    def __init__(self, folder: Path, warn_s: float, fail_s: float) -> None:
        self.folder, self.warn_s, self.fail_s = folder, warn_s, fail_s
        self.warned = False
        self.stalled_s = 0.0  # the longest stall seen (from the last beat to the next)
        self.next_look = 0.0
        self.failed = False

    def beats(self) -> dict[int, tuple[float, int, int]]:
        """rank -> (time of its last beat, its step, its pid)."""
        found = {}
        for f in self.folder.glob("rank*"):
            with contextlib.suppress(OSError, ValueError):
                step, pid = f.read_text().split()
                found[int(f.name.removeprefix("rank"))] = (f.stat().st_mtime, int(step), int(pid))
        return found

    def culprit(self, beats: dict[int, tuple[float, int, int]]) -> str:
        """Who holds the others up: a stopped rank, else a busy one among waiting ones,
        else the rank with the fewest steps (the oldest beat on a tie)."""
        states = {rank: _state(pid) for rank, (_, _, pid) in beats.items()}
        for kinds in (STATES, BUSY):
            named = [r for r, s in sorted(states.items()) if s in kinds]
            if named and (kinds is STATES or len(named) < len(states)):
                rank = named[0]
                return f"rank {rank} {kinds[str(states[rank])]} at step {beats[rank][1]}"
        rank = min(beats, key=lambda r: (beats[r][1], beats[r][0]))
        return f"rank {rank} is behind (its last step {beats[rank][1]})"

    def poll(self) -> None:
        now = time.time()
        if now < self.next_look or self.failed:
            return
        self.next_look = now + 1.0
        beats = self.beats()
        if not beats:  # not training yet
            return
        quiet = now - max(t for t, _, _ in beats.values())
        if quiet < self.warn_s or self.warn_s <= 0:
            if self.warned:
                self.warned = False
                _say(f"[stall] progress again after {self.stalled_s:.0f} s")
            return
        self.stalled_s = max(self.stalled_s, quiet)
        if self.fail_s > 0 and quiet >= self.fail_s:
            self.failed = True
            raise Stalled(
                f"{self.culprit(beats)}: no rank made progress for {quiet:.0f} s "
                f"(launcher.stall_timeout_s={self.fail_s:g})"
            )
        if not self.warned:
            self.warned = True
            until = f"; the run fails after {self.fail_s:g} s" if self.fail_s > 0 else ""
            _say(
                f"[stall] no progress for {quiet:.0f} s: {self.culprit(beats)}, the others "
                f"wait for it{until} (launcher.stall_timeout_s)"
            )

    def marks(self) -> Summary:
        """What a summary records of a stall: its length, and that its times are not clean."""
        if self.stalled_s <= 0:
            return {}
        return {"stalled_s": round(self.stalled_s, 1), "timings_valid": False}


def _say(line: str) -> None:
    log.warning(line)  # under Hydra: the console and the job's log
