"""All launching in one place: validate, prepare the run folder, start the workers.

Locally a run is ``workers`` real processes (spawned; gloo on CPU, NCCL on GPUs) that
meet at a TCP store owned by this process on a free port. The launcher watches them:
the first worker to fail (exception, kill -9, out of memory) makes it stop the others at
once and mark the run ``failed`` with that worker's error, so a crash never hangs.
When a scheduler already started one task per rank (torchrun, or submitit with
``tasks_per_node=workers``), each task runs its rank directly.
The training code does not know which path started it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import protocols
from suite import netem
from suite.checkpoint import Checkpoints
from suite.config import ConfigError, RunConfig
from suite.data import load_dataset
from suite.dist import (
    Comm,
    Rendezvous,
    destroy_process_group,
    die_with_parent,
    init_process_group,
    pick_device,
)
from suite.models.resnet import BN_MODES
from suite.record import RunDir, environment
from suite.train import Preempted, build, problem_info, train

log = logging.getLogger("suite")

SCHEDULES = ("step", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")
MAX_WORKERS = 1024


def validate(cfg: RunConfig) -> None:
    """Refuse a configuration that cannot run, naming the problem and the valid choices."""
    if not isinstance(cfg.workers, int) or not 1 <= cfg.workers <= MAX_WORKERS:
        raise ConfigError(f"workers must be an integer in 1..{MAX_WORKERS}, got {cfg.workers!r}")
    if cfg.data.sharding not in ("disjoint", "full"):
        raise ConfigError(f"data.sharding={cfg.data.sharding!r}; valid: disjoint, full")
    if cfg.data.batch_size < 1 or cfg.data.eval_batch_size < 1:
        raise ConfigError("data.batch_size and data.eval_batch_size must be >= 1")
    if cfg.optim.name != "sgd":
        raise ConfigError(f"optim.name={cfg.optim.name!r}; valid: sgd")
    if cfg.optim.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule={cfg.optim.schedule!r}; valid: {', '.join(SCHEDULES)}")
    if cfg.model.bn not in BN_MODES:
        raise ConfigError(f"model.bn={cfg.model.bn!r}; valid: {', '.join(BN_MODES)}")
    if cfg.train.data_epochs <= 0 or cfg.train.eval_every <= 0:
        raise ConfigError("train.data_epochs and train.eval_every must be > 0")
    if cfg.train.precision not in PRECISIONS:
        raise ConfigError(
            f"train.precision={cfg.train.precision!r}; valid: {', '.join(PRECISIONS)}"
        )
    if cfg.launcher.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"launcher.device={cfg.launcher.device!r}; valid: auto, cpu, cuda")
    if cfg.launcher.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("launcher.device=cuda but no CUDA device is visible; use auto or cpu")
    uses_cuda = cfg.launcher.device == "cuda" or (
        cfg.launcher.device == "auto" and torch.cuda.is_available()
    )
    if uses_cuda and cfg.workers > torch.cuda.device_count() and _scheduler_tasks() <= 1:
        raise ConfigError(
            f"workers={cfg.workers} but only {torch.cuda.device_count()} GPU(s) here and NCCL "
            "needs one GPU per rank; use fewer workers or launcher.device=cpu"
        )
    if cfg.launcher.link is not None:
        if _scheduler_tasks() > 1:
            raise ConfigError(
                "launcher.link emulates a cluster on one machine; not under a scheduler"
            )
        netem.check(cfg.launcher.link, cfg.workers)
    if uses_cuda and cfg.train.precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision=bf16 but this GPU has no bf16; use fp32")
    ds = load_dataset(cfg.data)  # a missing or corrupt data set fails here, not in a worker
    per_worker = ds.num_train // cfg.workers if cfg.data.sharding == "disjoint" else ds.num_train
    if per_worker < cfg.data.batch_size:
        raise ConfigError(
            f"workers={cfg.workers} with data.batch_size={cfg.data.batch_size} leaves each worker "
            f"{per_worker} of {cfg.data.name}'s {ds.num_train} training samples, less than one "
            "batch; use fewer workers, a smaller batch, or data.sharding=full"
        )
    model = build(cfg, ds, torch.device("cpu"))
    reason = protocols.get(cfg.protocol_name).supports(
        cfg.protocol, problem_info(cfg, ds, model), cfg.workers
    )
    if reason:
        raise ConfigError(reason)


def _scheduler_tasks() -> int:
    """How many tasks the scheduler started for this job (1 outside submitit / SLURM)."""
    try:
        import submitit

        return int(submitit.JobEnvironment().num_tasks)
    except (ImportError, RuntimeError):
        return 1


def _scheduler_rank() -> Rendezvous | None:
    """This task's rank when a scheduler started one task per worker (submitit / SLURM);
    exports MASTER_ADDR, RANK, ... for the process group."""
    if _scheduler_tasks() <= 1:
        return None
    import submitit

    dist_env = submitit.helpers.TorchDistributedEnvironment()
    # Every task sees all of its node's GPUs and picks cuda:LOCAL_RANK (pick_device);
    # narrowing CUDA_VISIBLE_DEVICES here would come after CUDA was already initialised.
    dist_env.export(set_cuda_visible_devices=False, overwrite=True)
    return Rendezvous(dist_env.rank, dist_env.world_size)


def run_dir(cfg: RunConfig) -> RunDir:
    """The run folder of ``cfg`` (named by its semantic config)."""
    return RunDir(Path(cfg.results_dir).resolve() / cfg.run_name())


def skip_completed(cfg: RunConfig) -> dict[str, Any] | None:
    """The summary to return instead of running, if ``cfg`` already completed (and
    ``force`` is off); None if it has to run."""
    run = run_dir(cfg)
    if cfg.force or not run.is_complete():
        return None
    log.info("skipping %s: already completed (force=true re-runs it)", run.path.name)
    print(f"[skip] {run.path} already completed")
    return {**(run.read_summary() or {}), "skipped": True, "run_dir": str(run.path)}


def execute(cfg: RunConfig) -> dict[str, Any]:
    """Run one configuration (or skip it if already completed); return its summary."""
    validate(cfg)
    skipped = skip_completed(cfg)
    if skipped is not None:
        return skipped
    run = run_dir(cfg)
    resume = cfg.train.checkpoint and not cfg.force and Checkpoints(run.path, 0).latest_step()
    rdv = _scheduler_rank()
    if rdv is not None:  # one task per rank: run our rank here
        summary = run_task(rdv, cfg, run, bool(resume))
        if rdv.rank != 0:
            return {**summary, "rank": rdv.rank, "run_dir": str(run.path)}
    else:
        _prepare(cfg, run, bool(resume))
        summary = spawn_local(cfg, run)
    _print_summary(run, summary)
    return {**summary, "run_dir": str(run.path)}


def run_task(rdv: Rendezvous, cfg: RunConfig, run: RunDir, resume: bool) -> dict[str, Any]:
    """This task's rank of a run whose ranks a scheduler started (SLURM via submitit).

    The scheduler's preemption / time-limit signal (submitit's, USR2 by default) makes
    every rank checkpoint at the next round's end; rank 0 then hands over to submitit,
    which requeues the job, and the requeued job resumes from that checkpoint. If a rank
    fails, the others see it within a collective and the lowest failing rank writes the
    run's ``failed`` summary, naming the rank that died.
    """
    started = time.perf_counter()
    if rdv.rank == 0:
        _prepare(cfg, run, resume)
    signum = signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]
    requested: list[int] = []
    requeue = signal.signal(signum, lambda sig, frame: requested.append(sig))
    try:
        worker(rdv, cfg, str(run.path), stop=lambda: bool(requested))
    except Preempted as stopped:
        print(f"[preempted] {run.path}: {stopped}; checkpoint saved")
        if rdv.rank == 0 and callable(requeue):
            requeue(signum, None)  # submitit: requeue this job (and exit); it resumes
        return {"status": "preempted", "run_dir": str(run.path)}
    except Exception:
        _record_task_failure(cfg, run, rdv)
        raise
    finally:
        signal.signal(signum, requeue)
    summary = run.read_summary() or {}
    return {**summary, "wall_s": time.perf_counter() - started}


def _record_task_failure(
    cfg: RunConfig, run: RunDir, rdv: Rendezvous, grace_s: float = 1.0
) -> None:
    """After a failure: wait for the peers' error reports, then the lowest failing rank
    writes the run's summary (a rank killed by a signal writes none, which names it)."""
    time.sleep(grace_s)
    reported = sorted(int(f.stem.removeprefix("error-rank")) for f in run.error_files())
    if not reported or reported[0] != rdv.rank:
        return
    silent = sorted(set(range(rdv.world_size)) - set(reported))
    if silent:
        error = (
            f"rank {silent[0]} ended without an error report: killed by a signal "
            "(kill -9, out of memory) or its node failed"
        )
    else:
        error = _describe_failure(run, [])
    run.write_summary(failed_summary(cfg, error))


def failed_summary(cfg: RunConfig, error: str, **extra: Any) -> dict[str, Any]:
    """The summary of a run that did not finish."""
    return {
        "status": "failed",
        "protocol": cfg.protocol_name,
        "workers": cfg.workers,
        "seed": cfg.seed,
        "data": cfg.data.name,
        "error": error,
        **extra,
    }


def _prepare(cfg: RunConfig, run: RunDir, resume: bool = False) -> None:
    if resume:  # continue in place from the checkpoint; keep the earlier attempt's errors
        print(f"[resume] {run.path} from its last checkpoint")
        run.archive_errors()
        return
    run.prepare()
    run.write_config(cfg.to_dict())
    device = str(pick_device(cfg.launcher.device, 0).type)
    run.write_env(environment(cfg.workers, device, threads_per_worker(cfg)))


def threads_per_worker(cfg: RunConfig) -> int:
    """Intra-op threads of each worker: the setting, else what the scheduler gave each
    task, else the cores shared out."""
    if cfg.launcher.threads > 0:
        return cfg.launcher.threads
    if _scheduler_tasks() > 1 and os.environ.get("SLURM_CPUS_PER_TASK"):
        return int(os.environ["SLURM_CPUS_PER_TASK"])  # what the scheduler gave each task
    return max(1, (os.cpu_count() or 1) // cfg.workers)


def worker(
    rdv: Rendezvous,
    cfg: RunConfig,
    run_path: str,
    netns: str | None = None,
    stop: Callable[[], bool] | None = None,
) -> None:
    """One rank: join the group, train, always tear down; an error is written for the launcher.
    ``netns``: the network namespace of this rank on an emulated cluster; ``stop``: asked
    at every round's end whether to checkpoint and stop (``Preempted``)."""
    run = RunDir(run_path)
    try:
        netem.enter(netns)
        torch.set_num_threads(threads_per_worker(cfg))
        local_rank = int(os.environ.get("LOCAL_RANK", rdv.rank))
        device = pick_device(cfg.launcher.device, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        init_process_group(rdv, device, cfg.launcher.timeout_s)
        comm = Comm(rdv.rank, rdv.world_size, device)
        ckpt = Checkpoints(run.path, rdv.rank) if cfg.train.checkpoint else None
        train(cfg, comm, device, run if rdv.rank == 0 else None, ckpt, stop)
    except Preempted:
        raise
    except BaseException:
        (run.path / f"error-rank{rdv.rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        destroy_process_group()


def _worker_entry(rdv: Rendezvous, cfg: RunConfig, run_path: str, netns: str | None = None) -> None:
    """Process target. Exits with os._exit: results are already fsynced, and C++ static
    teardown of gloo/store threads at interpreter exit can abort a finished worker."""
    code = 0
    try:
        die_with_parent()  # never outlive the launcher (its kill -9 included)
        worker(rdv, cfg, run_path, netns)
    except BaseException:
        code = 1  # the traceback is in error-rank<r>.txt
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def spawn_local(cfg: RunConfig, run: RunDir, poll_s: float = 0.05) -> dict[str, Any]:
    """Start ``workers`` processes, watch them, and return the run's summary (with
    ``launcher.link``, every rank in its own namespace behind a shaped link)."""
    with netem.endpoints(cfg.workers, cfg.launcher.link) as (host, spaces):
        return _spawn(cfg, run, host, spaces, poll_s)


def _spawn(
    cfg: RunConfig, run: RunDir, host: str, spaces: list[str | None], poll_s: float
) -> dict[str, Any]:
    store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker_entry,
            args=(Rendezvous(r, cfg.workers, host, store.port), cfg, str(run.path), spaces[r]),
            name=f"rank{r}",
        )
        for r in range(cfg.workers)
    ]
    started = time.perf_counter()
    failed: list[tuple[int, int]] = []  # (rank, exit code) of the failures first seen
    try:
        for p in procs:
            p.start()
        while not failed and any(p.exitcode is None for p in procs):
            time.sleep(poll_s)
            failed = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode]
    except KeyboardInterrupt:
        failed = [(-1, -int(signal.SIGINT))]
    finally:
        _stop(procs)
        del store
    wall = time.perf_counter() - started
    summary = run.read_summary()
    if not failed and summary is not None:
        return {**summary, "wall_s": wall}
    summary = failed_summary(cfg, _describe_failure(run, failed), wall_s=wall)
    run.write_summary(summary)
    return summary


def _stop(procs: list[Any], grace_s: float = 3.0) -> None:
    """Terminate every live worker; kill what does not exit within the grace period."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _describe_failure(run: RunDir, failed: list[tuple[int, int]]) -> str:
    """The root cause of a failed run.

    A rank killed by a signal (kill -9, the OOM killer) writes nothing, and its peers then
    fail on broken connections; so a signal death seen first wins, and otherwise the
    earliest error file written.
    """
    for rank, code in failed:
        if rank < 0:
            return "interrupted by the user"
        if code < 0:
            name = signal.Signals(-code).name
            return (
                f"rank {rank} was killed by {name} (signal {-code}): "
                "out of memory or killed externally"
            )
    errors = sorted(run.error_files(), key=lambda f: f.stat().st_mtime_ns)
    if errors:
        first = errors[0]
        text = first.read_text().strip().splitlines()
        others = f"; then {', '.join(e.stem for e in errors[1:])}" if len(errors) > 1 else ""
        last = text[-1] if text else "unknown error"
        return f"{first.stem}: {last} (traceback in {first.name}{others})"
    if failed:
        return f"rank {failed[0][0]} exited with code {failed[0][1]}"
    return "workers exited without writing a summary"


def _print_summary(run: RunDir, s: dict[str, Any]) -> None:
    if s.get("status") == "completed" or s.get("status") == "diverged":
        acc = s.get("final_test_acc")
        print(
            f"[{s['status']}] {s.get('protocol')} workers={s.get('workers')} seed={s.get('seed')}: "
            f"test acc {acc if acc is None else f'{acc:.4f}'}, train {s.get('train_s', 0):.1f}s "
            f"(comm {s.get('comm_s', 0):.1f}s), {s.get('bytes', 0) / 1e9:.4f} GB communicated, "
            f"wall {s.get('wall_s', 0):.1f}s -> {run.path}"
        )
    else:
        print(f"[{s.get('status')}] {run.path}: {s.get('error')}")
