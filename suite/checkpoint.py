"""Checkpoints of a run in progress, so a killed or preempted run resumes where it stopped.

Each rank saves its whole state (model, protocol with its optimizer, data position and
augmentation RNG, loop counters, training clock, byte counters) to
``checkpoint/rank<r>-step<s>.pt``, written atomically. When every rank has written its
file, rank 0 atomically points ``checkpoint/latest.json`` at that step and remembers the
step before it; only files older than that previous set are removed. A crash mid-write
therefore leaves complete sets in place, and a set that does not load (truncated or
garbled on disk) is skipped for the previous one, never half-used. An unreadable
``latest.json`` falls back to the sets on disk that have every rank's file.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from suite.record import atomic_write_text


class Checkpoints:
    """The checkpoint folder of one run, seen from one rank (of ``world_size``, when known:
    it tells a complete set on disk from one a rank had not written yet)."""

    def __init__(self, run_dir: str | Path, rank: int, world_size: int | None = None) -> None:
        self.folder = Path(run_dir) / "checkpoint"
        self.rank = rank
        self.world_size = world_size
        self.latest_file = self.folder / "latest.json"

    def _read_pointer(self) -> tuple[dict[str, Any], str | None]:
        """``latest.json``, and why it cannot be used if it is there but unreadable."""
        try:
            text = self.latest_file.read_text()
        except FileNotFoundError:
            return {}, None
        except OSError as err:
            return {}, err.strerror or str(err)
        try:
            value = json.loads(text)
        except ValueError as err:
            return {}, f"not valid JSON: {err}"
        if not isinstance(value, dict) or not isinstance(value.get("step"), int):
            return {}, f"no step in {text[:60]!r}"
        return value, None

    def _pointer(self) -> dict[str, Any]:
        return self._read_pointer()[0]

    def unreadable_pointer(self) -> str | None:
        """Why ``latest.json`` is there but unusable (the complete sets on disk are then
        the candidates), or None."""
        return self._read_pointer()[1]

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        steps = self.candidates()
        return steps[0] if steps else None

    def candidates(self) -> list[int]:
        """Complete checkpoint steps to resume from, newest first (latest, then previous;
        if ``latest.json`` is unreadable, every set on disk that has all ranks' files)."""
        pointer, unreadable = self._read_pointer()
        if unreadable is not None:
            return self.complete_sets()
        steps = [pointer.get("step"), pointer.get("previous")]
        return [int(s) for s in steps if isinstance(s, int)]

    def complete_sets(self) -> list[int]:
        """Steps with a file for every rank (each written atomically), newest first."""
        ranks: dict[int, set[int]] = {}
        for f in self.folder.glob("rank*-step*.pt"):
            rank, _, step = f.stem.removeprefix("rank").partition("-step")
            if rank.isdigit() and step.isdigit():
                ranks.setdefault(int(step), set()).add(int(rank))
        world = self.world_size or max((max(r) + 1 for r in ranks.values()), default=0)
        return sorted((s for s, r in ranks.items() if r >= set(range(world))), reverse=True)

    def _path(self, step: int, rank: int | None = None) -> Path:
        return self.folder / f"rank{self.rank if rank is None else rank}-step{step}.pt"

    def save(self, step: int, state: dict[str, Any]) -> None:
        """Write this rank's state for ``step`` atomically (call ``commit`` after a barrier)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(step)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        buffer = io.BytesIO()  # serialised first: a full disk then says so (ENOSPC), where
        torch.save(state, buffer)  # torch's zip writer would only report a wrong position
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:  # a full disk: no partial file left behind
            tmp.unlink(missing_ok=True)
            raise

    def commit(self, step: int, world_size: int) -> None:
        """Rank 0, once every rank saved ``step``: make it the latest, keep the set before it
        as a fallback and drop anything older."""
        previous = self.latest_step()
        if previous == step:  # saved twice at one step (an evaluation, then a stop)
            previous = self._pointer().get("previous")
        pointer = {"step": step, "previous": previous, "world_size": world_size}
        atomic_write_text(self.latest_file, json.dumps(pointer))
        keep = {step} if previous is None else {step, previous}
        for old in self.folder.glob("rank*-step*.pt"):
            if int(old.stem.rsplit("-step", 1)[1]) not in keep:
                old.unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete the folder (the run is complete)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def load(self, step: int) -> dict[str, Any]:
        """This rank's state at ``step``; a missing or corrupt file raises RuntimeError."""
        path = self._path(step)
        try:
            return dict(torch.load(path, weights_only=False))
        except Exception as err:  # truncated or garbled file
            raise RuntimeError(f"checkpoint {path} is unreadable: {err}") from err
