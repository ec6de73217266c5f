"""One folder per run: ``config.yaml``, ``env.json``, ``metrics.jsonl``, ``summary.json``.

``summary.json`` is written last and atomically (temporary file, fsync, rename): its
presence with ``status: completed`` marks a finished run that re-runs skip.
``metrics.jsonl`` gets one JSON object per evaluation, flushed and fsynced as written,
so rows already written survive any crash. Non-finite numbers become ``null``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypedDict, cast, get_args

import torch
import yaml

#: How a run ended, as its ``summary.json`` says: ``completed`` and ``diverged`` (a
#: result: the loss went non-finite) are written by the loop; ``failed`` (a rank died, the
#: run stalled, a scheduler's job ended), ``stopped`` (a signal) and ``preempted`` (to be
#: resumed) by the launchers; ``busy`` (the same run was already running) and ``skipped``
#: (already completed) are a sweep job's outcome only, never a summary on disk.
Status = Literal["completed", "diverged", "failed", "stopped", "preempted", "busy", "skipped"]
STATUSES: tuple[Status, ...] = get_args(Status)


class Summary(TypedDict, total=False):
    """A run's ``summary.json``, and what the launchers return for a run: the loop's
    fields when it finished (``suite.train``), the launcher's when it did not
    (``suite.launch.failed_summary``), and the launcher's own additions (``run_dir``,
    ``wall_s``, the stall watch's marks). Every reader reads it through this type."""

    status: Status
    error: str | None
    protocol: str
    workers: int
    seed: int
    data: str
    final_test_acc: float | None
    best_test_acc: float | None
    final_test_loss: float | None
    train_s: float | None
    compute_s: float | None
    comm_s: float | None
    bytes: int | None
    bytes_moved: int | None
    bytes_payload: int | None
    steps: int
    rounds: int
    data_epochs: float
    protocol_stats: dict[str, Any]
    peak_memory_bytes: int
    threads_per_worker: int
    started_unix: float
    compiled_graphs: int  # train.compile
    # Added by the launchers:
    run_dir: str
    rank: int  # the rank that returned it (torchrun, SLURM: every task returns one)
    wall_s: float
    skipped: bool  # already completed: nothing ran
    signal: str  # the signal that stopped it
    checkpoint_step: int | None  # where a stopped run resumes
    slurm_job: str  # the SLURM job of a task that ended without a summary
    stalled: bool  # the stall watch ended it (suite.heartbeat)
    stalled_s: float  # how long ranks stood still (a run that stalled and went on too)
    timings_valid: bool  # False after a stall: its times are not a clean measurement


METRIC_COLUMNS = (
    "round",
    "step",
    "epoch",
    "train_s",
    "compute_s",
    "comm_s",
    "bytes",
    "bytes_moved",
    "bytes_payload",
    "lr",
    "train_loss",
    "test_loss",
    "test_acc",
)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so readers see the old content or the new, never a partial one (and
    no temporary file is left behind when the write fails, e.g. on a full disk)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a read-only folder: keep the first error
            tmp.unlink(missing_ok=True)
        raise


class RunDir:
    """The folder of one run and the files in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.env = self.path / "env.json"
        self.metrics = self.path / "metrics.jsonl"
        self.summary = self.path / "summary.json"
        self.log_file = self.path / "run.log"
        self.attempts = self.path / "attempts"

    def read_summary(self) -> Summary | None:
        """The summary, or None when absent or unreadable."""
        try:
            data = json.loads(self.summary.read_text())
        except (OSError, ValueError):
            return None
        return cast(Summary, data) if isinstance(data, dict) else None

    def is_complete(self) -> bool:
        summary = self.read_summary()
        return summary is not None and summary.get("status") == "completed"

    def prepare(self) -> None:
        """Create the folder; an earlier unfinished or failed attempt is moved aside, not lost."""
        if self.path.exists() and any(self.path.iterdir()):
            stamp = time.strftime("%Y%m%d-%H%M%S")
            shutil.move(str(self.path), str(self.path.with_name(f"{self.path.name}.old-{stamp}")))
        self.path.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config, yaml.safe_dump(_clean(config), sort_keys=False))

    def write_env(self, env: dict[str, Any]) -> None:
        atomic_write_text(self.env, json.dumps(_clean(env), indent=2) + "\n")

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(_clean(row)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def log(self, line: str) -> None:
        """Append a progress line to ``run.log`` (the launcher relays it to its log)."""
        with open(self.log_file, "a") as f:
            f.write(line.rstrip("\n") + "\n")

    def truncate_metrics(self, rows: int) -> None:
        """Keep the first ``rows`` metric rows (those a resumed run's checkpoint covers)."""
        kept = self.metrics.read_text().splitlines()[:rows] if self.metrics.exists() else []
        atomic_write_text(self.metrics, "".join(line + "\n" for line in kept))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line]

    def write_summary(self, summary: Summary) -> None:
        atomic_write_text(self.summary, json.dumps(_clean(summary), indent=2) + "\n")

    def archive_errors(self) -> None:
        """Move an earlier attempt's error files aside (``attempts/``) before a resume."""
        errors = self.error_files()
        if errors:
            folder = self.path / "attempts" / time.strftime("%Y%m%d-%H%M%S")
            folder.mkdir(parents=True, exist_ok=True)
            for f in errors:
                shutil.move(str(f), str(folder / f.name))

    def remove_partial_writes(self) -> list[Path]:
        """Remove the temporary files of writes that were cut off (a kill during a
        checkpoint or an atomic write); return them."""
        found = [
            *(self.path / "checkpoint").glob("*.tmp[0-9]*"),
            *self.path.glob(".*.tmp[0-9]*"),
            *self.attempts.glob(".*.tmp[0-9]*"),
        ]
        for f in found:
            f.unlink(missing_ok=True)
        return found

    def error_files(self) -> list[Path]:
        return sorted(self.path.glob("error-rank*.txt"))

    def attempt_files(self) -> list[Path]:
        """``attempts/<n>.json``, one per attempt (start or resume), in order."""
        found = [f for f in self.attempts.glob("*.json") if f.stem.isdigit()]
        return sorted(found, key=lambda f: int(f.stem))

    def first_environment(self) -> dict[str, Any] | None:
        """The environment of the run's first attempt (``env.json`` in a run folder
        written before attempts were recorded), or None."""
        files = self.attempt_files()
        try:
            return dict(json.loads((files[0] if files else self.env).read_text()))
        except (OSError, ValueError):
            return None

    def start_attempt(self, record: dict[str, Any]) -> None:
        """Record a new attempt: ``attempts/<n>.json``, n counting from 1."""
        files = self.attempt_files()
        n = int(files[-1].stem) + 1 if files else 1
        self.attempts.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_clean({"attempt": n, **record}), indent=2) + "\n"
        atomic_write_text(self.attempts / f"{n}.json", text)

    def end_attempt(self, summary: Summary) -> None:
        """Add how the latest attempt ended (its status, error or signal) to its record."""
        files = self.attempt_files()
        if not files:
            return
        record = json.loads(files[-1].read_text())
        keys = ("status", "error", "signal", "steps")
        ended = {k: v for k, v in summary.items() if k in keys and v is not None}
        record["ended"] = {**ended, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(files[-1], json.dumps(_clean(record), indent=2) + "\n")


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def code_version() -> dict[str, Any]:
    """The commit the code is at, and whether tracked files differ from it."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
    }


def environment(world_size: int, device: str, threads: int) -> dict[str, Any]:
    """Provenance of a run: code version, library versions, hardware, world size."""
    version = code_version()
    diff = _git("diff", "HEAD", "--binary") if version["git_dirty"] else None
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        **version,
        # What the uncommitted changes are, so that a resume can tell whether they changed.
        "git_diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
        "python": sys.version.split()[0],
        "versions": {
            name: _version(name)
            for name in ("commbench", "torch", "torchvision", "hydra-core", "submitit", "numpy")
        },
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "device": device,
        "world_size": world_size,
        "threads_per_worker": threads,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


#: What a resume must share with the run's first attempt (``changed_environment``).
LIBRARIES = ("torch", "numpy")


def changed_environment(first: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two attempts' environments that can change results: the code
    (commit, uncommitted changes), torch, numpy and Python, and the threads per worker."""
    changes = []

    def differs(what: str, a: Any, b: Any) -> None:
        if a != b:
            changes.append(f"{what} {a} -> {b}")

    sha = [str(e.get("git_sha"))[:12] if e.get("git_sha") else None for e in (first, now)]
    differs("commit", *sha)
    dirty = [e.get("git_dirty") for e in (first, now)]
    if dirty[0] != dirty[1]:
        changes.append(
            f"uncommitted changes {'yes' if dirty[0] else 'none'} -> "
            f"{'yes' if dirty[1] else 'none'}"
        )
    elif dirty[0] and "git_diff_sha256" in first:
        diffs = [str(e.get("git_diff_sha256"))[:12] for e in (first, now)]
        differs("uncommitted changes (diff sha256)", *diffs)
    for name in LIBRARIES:
        differs(name, first.get("versions", {}).get(name), now.get("versions", {}).get(name))
    differs("python", first.get("python"), now.get("python"))
    differs("threads per worker", first.get("threads_per_worker"), now.get("threads_per_worker"))
    return changes
