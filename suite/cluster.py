"""Sweeps on a SLURM cluster: Hydra's submitit launcher with one task per worker.

``python -m suite.run -m hydra/launcher=slurm protocol=ddp,resist workers=2,4,8``
submits one SLURM job per sweep point. Each job gets ``workers`` tasks: on GPU nodes one
task per GPU over ``ceil(workers / gpus_per_node)`` nodes, on CPU nodes all on one node
(or spread by ``max_tasks_per_node``). Every task runs its own rank (``suite.launch``
takes rank and rendezvous from submitit's environment); NCCL on GPUs, gloo otherwise.

What this adds to the plugin's launcher, which sizes every job of a sweep alike and stops
at the first failed job:

- the job shape follows each sweep point's ``workers`` (jobs of one shape share an array);
- every sweep point is validated before anything is submitted, and completed runs are
  skipped without a job;
- a failed job is recorded (its run marked ``failed`` if no rank could) and the sweep
  goes on; ``SweepSummary`` lists completed, failed, diverged and skipped runs at the end;
- ``max_num_timeout`` defaults to 3: runs checkpoint on the time-limit / preemption
  signal and resume when requeued.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

from suite.config import ConfigError, RunConfig
from suite.launch import RunBusy, failed_summary, run_dir, run_lock, skip_completed
from suite.record import Summary
from suite.sweep import sweep_points, write_outcome


@dataclass(frozen=True)
class Layout:
    """The SLURM shape of one run."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int


def layout(workers: int, gpus_per_node: int | None, max_tasks_per_node: int | None) -> Layout:
    """One task per worker: per GPU on GPU nodes, else as many per node as allowed."""
    per_node = gpus_per_node or max_tasks_per_node or workers
    if per_node < 1:
        raise ConfigError(
            f"hydra.launcher.max_tasks_per_node={max_tasks_per_node}; use a positive number"
        )
    nodes = math.ceil(workers / per_node)
    if workers % nodes:
        raise ConfigError(
            f"workers={workers} cannot be split evenly over {nodes} nodes of at most "
            f"{per_node} tasks; use a multiple of {nodes}"
        )
    tasks = workers // nodes
    return Layout(nodes, tasks, tasks if gpus_per_node else 0)


@dataclass
class _Job:
    num: int
    overrides: list[str]
    cfg: RunConfig
    folder: Path  # the Hydra job folder (sweep dir / subdir)


class SweepSlurmLauncher(SlurmLauncher):
    """The submitit SLURM launcher, sized per sweep point and tolerant of failed jobs."""

    spawns_locally = False  # workers run on the job's nodes, not on this machine

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        params = dict(self.params)
        try:  # every point is checked before anything is submitted
            jobs, layouts = self._plan(params, job_overrides, initial_job_idx)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        returns: dict[int, JobReturn] = {}
        pending: dict[Layout, list[_Job]] = {}
        locks = contextlib.ExitStack()  # one set of workers per run folder, for the sweep
        for job, shape in zip(jobs, layouts, strict=True):
            skipped = skip_completed(job.cfg)
            if skipped is not None:
                returns[job.num] = _job_return(job, skipped)
                continue
            try:
                locks.enter_context(run_lock(job.cfg))
            except RunBusy as busy:
                print(f"[busy] {busy}")
                returns[job.num] = _job_return(job, {"status": "busy", "error": str(busy)})
                continue
            skipped = skip_completed(job.cfg)  # again, under the lock: it may have just ended
            if skipped is not None:
                returns[job.num] = _job_return(job, skipped)
                continue
            pending.setdefault(shape, []).append(job)
        with locks:  # released when every job has ended
            submitted = self._submit(params, pending)
            wait_for(handle for _, handle in submitted)
            for job, handle in submitted:  # a failed job never stops the sweep
                try:
                    returns[job.num] = handle.results()[0]
                except Exception as err:
                    returns[job.num] = _job_return(job, _failure(job, handle, err))
        return [returns[j.num] for j in jobs]

    def _plan(
        self, params: dict[str, Any], job_overrides: Sequence[Sequence[str]], first: int
    ) -> tuple[list[_Job], list[Layout]]:
        """Every point composed and checked, and its job's shape (from its workers)."""
        for key in ("tasks_per_node", "nodes"):
            if params.pop(key, None) is not None:
                raise ConfigError(
                    f"hydra.launcher.{key} is derived from workers; set gpus_per_node "
                    "(GPUs per node) or max_tasks_per_node instead"
                )
        gpus, max_tasks = params.pop("gpus_per_node"), params.pop("max_tasks_per_node")
        points = sweep_points(self, job_overrides, first)
        jobs = [
            _Job(first + i, list(o), cfg, folder)
            for i, (o, (cfg, folder)) in enumerate(zip(job_overrides, points, strict=True))
        ]
        return jobs, [layout(j.cfg.workers, gpus, max_tasks) for j in jobs]

    def _submit(
        self, params: dict[str, Any], pending: dict[Layout, list[_Job]]
    ) -> list[tuple[_Job, Any]]:
        """One job array per shape, each element one sweep point."""
        import submitit

        assert self.config is not None
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        executor = submitit.AutoExecutor(
            folder=params.pop("submitit_folder"),
            cluster="slurm",
            slurm_max_num_timeout=params.pop("max_num_timeout"),
        )
        base = {"timeout_min", "cpus_per_task", "mem_gb", "name", "stderr_to_stdout"}
        params = {k if k in base else f"slurm_{k}": v for k, v in params.items()}
        submitted: list[tuple[_Job, Any]] = []
        for shape, group in pending.items():
            executor.update_parameters(
                **params,
                nodes=shape.nodes,
                tasks_per_node=shape.tasks_per_node,
                gpus_per_node=shape.gpus_per_node,
            )
            state = Singleton.get_state()
            args = [
                (j.overrides, "hydra.sweep.dir", j.num, f"job_id_for_{j.num}", state) for j in group
            ]
            handles = executor.map_array(self, *zip(*args, strict=True))
            for j, handle in zip(group, handles, strict=True):
                print(f"[submitted] #{j.num} {' '.join(j.overrides)} -> job {handle.job_id}")
                submitted.append((j, handle))
        return submitted


def wait_for(handles: Iterable[Any], poll_s: float = 2.0) -> None:
    """Wait until every job has ended, with one line each time the counts change:
    how many are done, failed, running and pending (SLURM's states, via submitit)."""
    handles = list(handles)
    last = ""
    while True:
        done = failed = running = 0
        for handle in handles:  # each asked once: a state read twice can change between
            finished, state = handle.done(), str(handle.state).split()[0]
            if finished:  # a result is in (RUNNING: its tasks are still exiting) or it ended
                done += 1
                failed += state not in ("COMPLETED", "COMPLETING", "RUNNING")
            running += not finished and state == "RUNNING"
        line = (
            f"[slurm] {len(handles)} jobs: {done - failed} done, {failed} failed, "
            f"{running} running, {len(handles) - done - running} pending"
        )
        if line != last:
            print(line, flush=True)  # once: Hydra's console logging would repeat a log line
            last = line
        if done == len(handles):
            return
        time.sleep(poll_s)


def _failure(job: _Job, handle: Any, err: BaseException) -> Summary:
    """The summary of a run whose job failed; marks the run failed if no rank could."""
    run = run_dir(job.cfg)
    summary = run.read_summary()
    if summary is None:  # every rank died without a word (cancelled, node failure, ...)
        last = str(err).strip().splitlines()[-1:] or ["no error message"]
        error = f"SLURM job {handle.job_id} ended {handle.state}: {last[0]}"
        summary = failed_summary(job.cfg, error, slurm_job=handle.job_id)
        if run.path.exists():
            run.write_summary(summary)
    print(f"[{summary.get('status')}] {run.path}: {summary.get('error')}")
    return {**summary, "run_dir": str(run.path), "slurm_job": handle.job_id}


def _job_return(job: _Job, summary: Summary) -> JobReturn:
    """A sweep result for a job that returned nothing itself (skipped or failed)."""
    write_outcome(job.folder, summary)
    ret = JobReturn(overrides=job.overrides, working_dir=str(job.folder), task_name="run")
    ret.return_value = summary
    ret.status = JobStatus.COMPLETED  # recorded; the sweep goes on
    return ret
