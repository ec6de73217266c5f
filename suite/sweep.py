"""Hydra at the edge: what the command line composes from, and what a sweep reports.

- :func:`register` puts every protocol's ``Config`` (shipped and plugin alike) into
  Hydra's ConfigStore under the ``protocol`` group, so ``protocol=<name>`` needs no
  yaml, and registers the resolvers protocols' presets use. It runs before Hydra
  composes (``suite.run`` calls it on import), also inside every SLURM task.
- :func:`run_config` turns a composed ``DictConfig`` into the typed :class:`RunConfig`.
- :class:`SweepSummary` ends a multirun with its completed, failed, diverged and
  skipped runs; every sweep job writes its line with :func:`write_outcome`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict

import protocols
from suite import architectures, datasources, launchers, optimizers
from suite.config import ConfigError, LaunchConfig, RunConfig, TrainConfig
from suite.plugins import Registry
from suite.problem import parse_run_config
from suite.record import Status, Summary, atomic_write_text

OUTCOME = "outcome.json"  # in each sweep job's Hydra folder: the run's summary line
STOPPED = "stopped.json"  # in the sweep folder: the signal that stopped the sweep early
STATUSES: tuple[Status, ...] = ("completed", "failed", "diverged", "stopped", "skipped", "busy")
#: Outcomes that make a multirun end with a non-zero exit status (after its summary).
BAD = ("failed", "stopped", "busy", "unknown")


def register() -> None:
    """Every registered protocol's, data set's, model's and optimizer's config in the
    ConfigStore, the
    presets' resolvers and the checked local launcher (idempotent)."""
    store = ConfigStore.instance()
    launchers.store()
    # The budget and the way workers start: their dataclasses are the only place their
    # defaults are written (no yaml copy to drift from them).
    store.store(group="train", name="default", node=_plain(dataclasses.asdict(TrainConfig())))
    store.store(group="launcher", name="local", node=_plain(dataclasses.asdict(LaunchConfig())))
    registries: list[Registry[Any]] = [
        datasources.REGISTRY,
        architectures.REGISTRY,
        optimizers.REGISTRY,
    ]
    for registry in registries:
        for name, component in sorted(registry.load_all().items()):
            node = _plain(dataclasses.asdict(component()))
            store.store(group=registry.key, name=name, node=node)
    # Unique sweep dirs. Cached like Hydra's ${now:}: the launcher's value travels in the
    # pickled config to SLURM tasks, which must all write to the launcher's sweep dir.
    OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("per_worker", per_worker, replace=True)
    for name, cls in sorted(protocols.load_all().items()):
        defaults = _plain(dataclasses.asdict(cls.Config()))
        if not cls.selects:
            store.store(group="protocol", name=name, node=defaults)
        else:  # choose its model family or optimizer too, from the global package
            choices = [{f"override /{group}": option} for group, option in cls.selects.items()]
            node = {"defaults": choices, "protocol": defaults}
            store.store(group="protocol", name=name, node=node, package="_global_")
        for resolver, fn in cls.resolvers().items():
            OmegaConf.register_new_resolver(resolver, fn, replace=True)


def per_worker(epochs: float, workers: int) -> float:
    """A budget stated per worker, as data-epochs (``${per_worker:40,${workers}}``): the
    released ResIST script gives every worker ``epochs`` passes over the full training
    set, so S workers process epochs x S training sets in all."""
    return float(epochs) * int(workers)


def _plain(value: Any) -> Any:
    """Tuples → lists (OmegaConf stores lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@cache
def compose(overrides: tuple[str, ...]) -> dict[str, Any]:
    """The config ``python -m suite.run <overrides>`` composes (resolved, a plain dict),
    e.g. a paper preset for the report."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register()
    with initialize_config_module(config_module="suite.conf", version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)
    return {str(k): v for k, v in values.items()}


def sweep_points(
    launcher: Launcher, job_overrides: Sequence[Sequence[str]], first: int
) -> list[tuple[RunConfig, Path]]:
    """Every point of a sweep composed and validated before any job starts (a bad one
    stops the whole sweep with the reason): its typed config and its Hydra job folder."""
    from suite.launch import validate

    config, context = launcher.config, launcher.hydra_context  # type: ignore[attr-defined]
    assert config is not None and context is not None
    points = []
    for num, overrides in enumerate(job_overrides, first):
        sweep = context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep):
            sweep.hydra.job.num = num
            folder = Path(str(sweep.hydra.sweep.dir)) / str(sweep.hydra.sweep.subdir)
            del sweep["hydra"]
        cfg = run_config(sweep)
        validate(cfg, local=getattr(launcher, "spawns_locally", True))
        points.append((cfg, folder))
    return points


class CheckedLauncher(BasicLauncher):
    """Hydra's basic launcher, which validates every sweep point before the first runs:
    a bad point no longer stops a sweep halfway, after others already ran. Ctrl-C,
    SIGTERM or SIGHUP stops the sweep once the current point has written its record
    (``STOPPED`` in the sweep folder; ``SweepSummary`` then exits 128 + the signal)."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from suite.launch import StopSignals

        try:
            points = sweep_points(self, job_overrides, initial_job_idx)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        returns: list[JobReturn] = []
        with StopSignals(threading.Event()) as between:  # a signal between two points
            for num, (overrides, (_, folder)) in enumerate(zip(job_overrides, points, strict=True)):
                returns.extend(super().launch([overrides], initial_job_idx + num))
                signum = _signal_of(folder) or between.received
                if signum is not None and num + 1 < len(points):
                    _record_stop(
                        folder.parent, signum, initial_job_idx + num, len(points) - num - 1
                    )
                    break
        return returns


def _signal_of(job_folder: Path) -> int | None:
    """The signal that stopped the sweep job in ``job_folder``, if any."""
    try:
        name = json.loads((job_folder / OUTCOME).read_text()).get("signal")
    except (OSError, ValueError):
        return None
    return int(signal.Signals[name]) if name else None


def _record_stop(sweep_dir: Path, signum: int, job: int, left: int) -> None:
    name = signal.Signals(signum).name
    with contextlib.suppress(OSError):
        print(f"[stop] {name}: the sweep stops after job #{job}; {left} point(s) not run")
    stop = {"signal": name, "after_job": job, "not_run": left}
    atomic_write_text(sweep_dir / STOPPED, json.dumps(stop) + "\n")


def run_config(cfg: DictConfig) -> RunConfig:
    """The composed Hydra config (without its ``hydra`` node) as typed dataclasses."""
    register()
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)
    return parse_run_config({str(k): v for k, v in values.items()})


def write_outcome(folder: Path, summary: Summary) -> None:
    """One sweep job's outcome, for ``SweepSummary``."""
    keys = ("status", "protocol", "workers", "seed", "final_test_acc", "error", "run_dir", "signal")
    outcome = {k: summary.get(k) for k in keys}
    if summary.get("skipped"):
        outcome["status"] = "skipped"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / OUTCOME, json.dumps(outcome) + "\n")
    except OSError as err:  # the sweep's summary then counts this job as unknown
        print(f"warning: {folder / OUTCOME} could not be written: {err}", file=sys.stderr)


def read_outcomes(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job's outcome of a sweep, in job order (``unknown`` where none was written)."""
    jobs = sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    rows = []
    for folder in jobs:
        try:
            row = json.loads((folder / OUTCOME).read_text())
        except (OSError, ValueError):
            row = {"status": "unknown", "error": f"no outcome in {folder}"}
        rows.append({"job": int(folder.name), **row})
    return rows


class SweepSummary(Callback):
    """At the end of a multirun: how many runs completed, failed, diverged or were skipped."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = read_outcomes(sweep_dir)
        counts: dict[str, int] = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
        counts["other"] = len(rows) - sum(counts.values())
        stopped = _stop_of(sweep_dir, rows)
        record: dict[str, Any] = {"counts": counts, "runs": rows}
        if stopped is not None:
            record["stopped_by"] = stopped.name
        atomic_write_text(sweep_dir / "sweep_summary.json", json.dumps(record, indent=2) + "\n")
        print(f"sweep {sweep_dir}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
        for r in rows:
            acc = r.get("final_test_acc")
            what = f"acc {acc:.4f}" if isinstance(acc, float) else (r.get("error") or "")
            print(
                f"  #{r['job']} {r['status']:9} {r.get('protocol')} w{r.get('workers')} "
                f"s{r.get('seed')} {what}"
            )
        if stopped is not None:  # Ctrl-C, SIGTERM, SIGHUP: the sweep ends here, as a shell expects
            print(f"sweep {sweep_dir}: stopped by {stopped.name}")
            raise SystemExit(128 + stopped)
        bad = [r for r in rows if r["status"] in BAD]
        if bad:  # every point ran; the sweep as a whole did not succeed
            print(f"sweep {sweep_dir}: {len(bad)} of {len(rows)} runs did not complete")
            raise SystemExit(1)


def _stop_of(sweep_dir: Path, rows: list[dict[str, Any]]) -> signal.Signals | None:
    """The signal that stopped the sweep (or its last point), if one did."""
    try:
        return signal.Signals[json.loads((sweep_dir / STOPPED).read_text())["signal"]]
    except (OSError, ValueError, KeyError):
        pass
    names = [r["signal"] for r in rows if r.get("signal")]
    return signal.Signals[names[-1]] if names else None
