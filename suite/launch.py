"""All launching in one place: validate, prepare the run folder, start the workers.

Locally a run is ``workers`` real processes (``suite.spawn``; gloo on CPU, NCCL on GPUs)
that the launcher watches: the first worker to fail (exception, kill -9, out of memory)
makes it stop the others at once and mark the run ``failed`` with that worker's error,
so a crash never hangs. When something else already started one process per rank,
each process runs its rank directly: submitit with ``tasks_per_node=workers`` on SLURM,
or ``torchrun --nproc_per_node=<workers> -m suite.run ...`` (the standard ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; rank 0 writes the run
folder). The training code does not know which path started it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch

from suite import loggers, netem, problem
from suite.checkpoint import Checkpoints
from suite.config import ConfigError, RunConfig
from suite.dist import Comm, Rendezvous, destroy_process_group, init_process_group, pick_device
from suite.heartbeat import FOLDER as heartbeat_folder
from suite.heartbeat import Heartbeat, Stalled, StallWatch
from suite.record import RunDir, Summary, changed_environment, environment
from suite.spawn import Outcome, signal_name, start_ranks
from suite.spawn import context as spawn_context
from suite.train import Preempted, train

log = logging.getLogger("suite")


class RunBusy(ConfigError):
    """The run folder is in use by another launcher (the same run started twice)."""


class EnvChanged(ConfigError):
    """A resume whose code, libraries or threads differ from the run's first attempt."""


@contextlib.contextmanager
def run_lock(cfg: RunConfig) -> Iterator[None]:
    """Hold the run's lock while its workers run, so that one set of workers ever writes
    a run folder: an exclusive ``flock`` on ``<results_dir>/.locks/<run name>.lock``,
    released by the kernel when the holder exits (kill -9 included). A second launcher
    of the same run is refused with ``RunBusy``, naming the one that runs it."""
    folder = Path(cfg.results_dir).resolve() / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cfg.run_name()}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "another process"
            raise RunBusy(
                f"{cfg.run_name()} is already running ({holder}); wait for it to end or stop "
                "it, then run again (a completed run is skipped, a stopped one resumes)"
            ) from None
        os.ftruncate(fd, 0)
        command = " ".join(sys.argv)[:300]
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(
            fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}: {command}".encode()
        )
        yield
    finally:
        os.close(fd)  # releases the lock


def check_writable(results_dir: str | Path) -> None:
    """Refuse a results folder that cannot be written, in one line, before anything starts."""
    path = Path(results_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"results_dir={results_dir} is a file, not a folder; choose a folder, e.g. "
            "results_dir=$HOME/results"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"results_dir={results_dir} cannot be written ({err.strerror or err}); "
            "choose a writable folder, e.g. results_dir=$HOME/results"
        ) from None


def machine() -> tuple[int, int]:
    """This machine's cores and memory in bytes (``/proc/meminfo``; 0 where unknown)."""
    memory = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    return os.cpu_count() or 1, memory


#: The machine rule for a local run: at most this many workers per core, and one
#: worker per this many bytes of memory (a worker process with torch and its share of
#: the model and data).
WORKERS_PER_CORE, BYTES_PER_WORKER = 64, 2**29


def check_machine(cfg: RunConfig) -> None:
    """Refuse a run whose workers this machine cannot hold (they all start here)."""
    cores, memory = machine()
    limit = WORKERS_PER_CORE * cores
    if memory:
        limit = min(limit, max(1, memory // BYTES_PER_WORKER))
    if cfg.workers > limit:
        raise ConfigError(
            f"workers={cfg.workers} would start {cfg.workers} worker processes on this machine "
            f"({cores} cores, {memory / 2**30:.1f} GiB of memory); at most {limit} here: one per "
            f"{BYTES_PER_WORKER / 2**30:g} GiB of memory and at most {WORKERS_PER_CORE} per core; "
            "use fewer workers, or a cluster (hydra/launcher=slurm)"
        )


def validate(cfg: RunConfig, local: bool = True) -> None:
    """Refuse a configuration that cannot run, naming the problem and the valid choices
    (value sets are checked once, when the config is parsed; this checks what depends
    on this machine, the data and the protocol). ``local``: the workers would start on
    this machine (False when a SLURM sweep places them on its nodes)."""
    check_writable(cfg.results_dir)
    loggers.check(cfg)
    problem.check(cfg)
    if local and _scheduler_tasks() <= 1:
        check_machine(cfg)
    uses_cuda = cfg.launcher.device == "cuda" or (
        cfg.launcher.device == "auto" and torch.cuda.is_available()
    )
    if cfg.launcher.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("launcher.device=cuda but no CUDA device is visible; use auto or cpu")
    nccl = uses_cuda and cfg.launcher.backend != "gloo"
    if nccl and cfg.workers > torch.cuda.device_count() and _scheduler_tasks() <= 1:
        raise ConfigError(
            f"workers={cfg.workers} but only {torch.cuda.device_count()} GPU(s) here and NCCL "
            "needs one GPU per rank; use fewer workers, launcher.backend=gloo (ranks share "
            "GPUs) or launcher.device=cpu"
        )
    if cfg.launcher.backend == "nccl" and not uses_cuda:
        raise ConfigError("launcher.backend=nccl needs GPUs; use auto or gloo on CPU")
    started = _scheduler_tasks()
    if started > 1 and started != cfg.workers:
        raise ConfigError(
            f"workers={cfg.workers} but {started} processes were started for this run (one "
            f"per rank, by torchrun or the scheduler); use workers={started}, or start "
            f"{cfg.workers}"
        )
    if cfg.launcher.link is not None:
        if started > 1:
            raise ConfigError(
                "launcher.link emulates a cluster on one machine; not under a scheduler"
            )
        netem.check(cfg.launcher.link, cfg.workers)
    if uses_cuda and cfg.train.precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision=bf16 but this GPU has no bf16; use fp32")


#: The standard distributed environment torchrun (and a hand-written srun script) sets.
TORCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _submitit_tasks() -> int:
    """How many tasks submitit's scheduler started for this job (1 outside one)."""
    try:
        import submitit

        return int(submitit.JobEnvironment().num_tasks)
    except (ImportError, RuntimeError):
        return 1


def _torchrun_world() -> int:
    """The world size of a torchrun-style start (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
    and ``MASTER_PORT`` set: each process is one rank), else 0."""
    if all(key in os.environ for key in TORCH_ENV):
        return int(os.environ["WORLD_SIZE"])
    return 0


def _scheduler_tasks() -> int:
    """How many processes something else started for this run, one per rank (submitit on
    SLURM, or torchrun): 1 when the suite starts its own workers."""
    tasks = _submitit_tasks()
    return tasks if tasks > 1 else max(1, _torchrun_world())


def _scheduler_rank() -> Rendezvous | None:
    """This process's rank when a scheduler started one process per worker: submitit on
    SLURM (which exports MASTER_ADDR, RANK, ... here), or torchrun (which set them)."""
    if _submitit_tasks() > 1:
        import submitit

        dist_env = submitit.helpers.TorchDistributedEnvironment()
        # Every task sees all of its node's GPUs and picks cuda:LOCAL_RANK (pick_device);
        # narrowing CUDA_VISIBLE_DEVICES here would come after CUDA was already initialised.
        dist_env.export(set_cuda_visible_devices=False, overwrite=True)
        return Rendezvous(dist_env.rank, dist_env.world_size)
    if _torchrun_world() > 1:
        return Rendezvous(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    return None


def run_dir(cfg: RunConfig) -> RunDir:
    """The run folder of ``cfg`` (named by its semantic config)."""
    return RunDir(Path(cfg.results_dir).resolve() / cfg.run_name())


def skip_completed(cfg: RunConfig) -> Summary | None:
    """The summary to return instead of running, if ``cfg`` already has a result (it
    completed, or diverged: a result too) and ``force`` is off; None if it has to run."""
    run = run_dir(cfg)
    summary = run.read_summary() or {}
    status = summary.get("status")
    if cfg.force or status not in RESULTS:
        return None
    log.info("skipping %s: already %s (force=true re-runs it)", run.path.name, status)
    print(f"[skip] {run.path} already {status} (a result; force=true re-runs it)")
    return {**summary, "skipped": True, "run_dir": str(run.path)}


#: Statuses that are results: a plain re-launch skips them, ``force=true`` re-runs them.
RESULTS = ("completed", "diverged")


def execute(cfg: RunConfig) -> Summary:
    """Run one configuration (or skip it if already completed); return its summary."""
    validate(cfg)
    skipped = skip_completed(cfg)
    if skipped is not None:
        return skipped
    run = run_dir(cfg)
    rdv = _scheduler_rank()
    if rdv is not None:  # one process per rank: run our rank here
        # Under SLURM our launcher holds the run's lock; under torchrun rank 0 takes it
        # (if busy it exits, and torchrun stops the other ranks).
        lock = rdv.rank == 0 and _submitit_tasks() <= 1
        with run_lock(cfg) if lock else contextlib.nullcontext():
            summary = run_task(rdv, cfg, run)
        if rdv.rank != 0:
            return {**summary, "rank": rdv.rank, "run_dir": str(run.path)}
        end_attempt(run, summary)
    else:
        with run_lock(cfg):
            skipped = skip_completed(cfg)  # again: another launcher may have just ended it
            if skipped is not None:
                return skipped
            prepare(cfg, run)
            summary = spawn_local(cfg, run)
            end_attempt(run, summary)
    _print_summary(run, summary)
    return {**summary, "run_dir": str(run.path)}


def prepare(cfg: RunConfig, run: RunDir) -> None:
    """The one place a run folder is set up: resumed in place when a complete checkpoint
    set is there (an earlier attempt's errors moved to ``attempts/``), otherwise made
    afresh (an earlier unfinished attempt moved aside) with its config and environment.
    Each attempt's environment is recorded in ``attempts/<n>.json``; a resume whose code,
    libraries or threads differ from the first attempt's is refused (``EnvChanged``)
    unless ``launcher.allow_changed_env``."""
    device = str(pick_device(cfg.launcher.device, 0).type)
    env = environment(cfg.workers, device, threads_per_worker(cfg))
    checkpoints = Checkpoints(run.path, 0, cfg.workers)
    if cfg.train.checkpoint and not cfg.force and checkpoints.latest_step():
        _resume_in_place(cfg, run, checkpoints, env)
        return
    run.prepare()
    run.write_config(cfg.to_dict())
    run.write_env(env)
    run.start_attempt({**env, "resumed": False})


def _resume_in_place(
    cfg: RunConfig, run: RunDir, checkpoints: Checkpoints, env: dict[str, Any]
) -> None:
    """Check that this attempt runs what the first one ran, tidy the folder (earlier
    errors to ``attempts/``, partial files of cut-off writes removed) and record it."""
    changed = changed_environment(run.first_environment() or env, env)
    if changed and not cfg.launcher.allow_changed_env:
        raise EnvChanged(
            f"{run.path.name} cannot resume: since its first attempt "
            f"({run.path.name}/attempts/1.json) {'; '.join(changed)}; resuming would mix "
            "two setups in one result. Restore them, start afresh with force=true, or "
            "resume anyway with launcher.allow_changed_env=true"
        )
    print(f"[resume] {run.path} from its last checkpoint")
    if checkpoints.unreadable_pointer():
        print(
            f"[resume] {checkpoints.latest_file} is unreadable "
            f"({checkpoints.unreadable_pointer()}); using the newest complete checkpoint "
            f"set on disk, step {checkpoints.latest_step()}"
        )
    if changed:
        print(f"[resume] with a changed environment (allowed): {'; '.join(changed)}")
    run.archive_errors()
    partial = run.remove_partial_writes()
    if partial:
        names = ", ".join(str(f.relative_to(run.path)) for f in partial)
        print(
            f"[resume] removed {len(partial)} partial file(s) of a write that was cut off: {names}"
        )
    run.start_attempt({**env, "resumed": True, "changed": changed})


def end_attempt(run: RunDir, summary: Summary) -> None:
    """Record how this attempt ended, if the run folder can still be written."""
    try:
        run.end_attempt(summary)
    except (OSError, ValueError) as err:
        log.warning("could not record the end of this attempt in %s: %s", run.attempts, err)


def run_task(rdv: Rendezvous, cfg: RunConfig, run: RunDir) -> Summary:
    """This task's rank of a run whose ranks a scheduler started (SLURM via submitit).

    The scheduler's preemption / time-limit signal (submitit's, USR2 by default) makes
    every rank checkpoint at the next round's end; rank 0 then hands over to submitit,
    which requeues the job, and the requeued job resumes from that checkpoint. If a rank
    fails, the others see it within a collective and the lowest failing rank writes the
    run's ``failed`` summary, naming the rank that died.
    """
    started = time.perf_counter()
    if rdv.rank == 0:
        prepare(cfg, run)
    signum = signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]
    requested: list[int] = []
    requeue = signal.signal(signum, lambda sig, frame: requested.append(sig))
    try:
        worker(rdv, cfg, str(run.path), stop=lambda: bool(requested))
    except Preempted as stopped:
        log.info("[preempted] %s: %s; checkpoint saved", run.path, stopped)
        if rdv.rank == 0:
            end_attempt(run, {"status": "preempted", "error": str(stopped)})
        if rdv.rank == 0 and callable(requeue):
            requeue(signum, None)  # submitit: requeue this job (and exit); it resumes
        return {"status": "preempted", "run_dir": str(run.path)}
    except Exception as err:
        _record_task_failure(cfg, run, rdv)
        if rdv.rank == 0:
            end_attempt(run, run.read_summary() or {"status": "failed", "error": repr(err)})
        raise
    finally:
        signal.signal(signum, requeue)
    summary = run.read_summary() or {}
    return {**summary, "wall_s": time.perf_counter() - started}


def _record_task_failure(
    cfg: RunConfig, run: RunDir, rdv: Rendezvous, settle_s: float = 3.0, limit_s: float = 60.0
) -> None:
    """After a failure: wait for the peers' error reports, then the lowest failing rank
    writes the run's summary (a rank killed by a signal writes none, which names it).

    Surviving ranks see the failure at different times: the wait ends once every rank
    has reported or no new report has come for ``settle_s`` (at most ``limit_s``). A
    survivor can still be later than that (blocked in a collective on a rank that is
    itself waiting here); it then finds itself named as the dead rank and corrects the
    summary, so the rank named is always one that never reported."""
    start = changed = time.monotonic()
    seen: set[int] = set()
    while True:
        seen_now = _reported(run)
        now = time.monotonic()
        if seen_now != seen:
            seen, changed = seen_now, now
        if len(seen) == rdv.world_size or now - changed >= settle_s or now - start >= limit_s:
            break
        time.sleep(0.1)
    written = (run.read_summary() or {}).get("error") or ""
    named_me = written.startswith(f"rank {rdv.rank} {_SILENT}")
    if not named_me and (not seen or min(seen) != rdv.rank):
        return
    silent = sorted(set(range(rdv.world_size)) - _reported(run))
    if silent:
        cause = "killed by a signal (kill -9, out of memory) or its node failed"
        error = f"rank {silent[0]} {_SILENT}: {cause}"
    else:
        error = describe_failure(run, Outcome())
    run.write_summary(failed_summary(cfg, error))


_SILENT = "ended without an error report"


def _reported(run: RunDir) -> set[int]:
    """The ranks that wrote an error report."""
    return {int(f.stem.removeprefix("error-rank")) for f in run.error_files()}


def failed_summary(cfg: RunConfig, error: str, **extra: Any) -> Summary:
    """The summary of a run that did not finish; ``extra``: more of :class:`Summary`'s keys."""
    summary: Summary = {
        "status": "failed",
        "protocol": cfg.protocol.name,
        "workers": cfg.workers,
        "seed": cfg.seed,
        "data": cfg.data.name,
        "error": error,
    }
    return cast(Summary, {**summary, **extra})


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
    stop: Callable[[], bool] | None = None,
    local_rank: int | None = None,
    heartbeat: bool = False,
) -> None:
    """One rank: join the group, train, always tear down; an error is written for the
    launcher. ``stop``: asked at every round's end whether to checkpoint and stop
    (``Preempted``). ``local_rank`` picks the GPU: the scheduler's ``LOCAL_RANK`` when
    it started the process (None), the rank itself for the suite's own workers (an
    inherited ``LOCAL_RANK`` must not put them all on one GPU). ``heartbeat``: beat for
    the launcher's stall watch (``suite.heartbeat``)."""
    run = RunDir(run_path)
    try:
        torch.set_num_threads(threads_per_worker(cfg))
        if local_rank is None:
            local_rank = int(os.environ.get("LOCAL_RANK", rdv.rank))
        device = pick_device(cfg.launcher.device, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        init_process_group(rdv, device, cfg.launcher.timeout_s, cfg.launcher.backend)
        comm = Comm(rdv.rank, rdv.world_size, device, cfg.launcher.backend)
        ckpt = Checkpoints(run.path, rdv.rank, rdv.world_size) if cfg.train.checkpoint else None
        beat = Heartbeat(run.path / heartbeat_folder, rdv.rank, os.getpid()) if heartbeat else None
        train(cfg, comm, device, run if rdv.rank == 0 else None, ckpt, stop, beat)
    except Preempted:
        raise
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk: the launcher hears it by pipe
            (run.path / f"error-rank{rdv.rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        destroy_process_group()


def local_worker(rdv: Rendezvous, cfg: RunConfig, run_path: str, stop: Any = None) -> None:
    """A rank the suite spawned itself: its GPU is its rank (round robin). ``stop``: the
    launcher's event, set on a stop signal; the rank then checkpoints at its round's end
    and exits cleanly (the launcher records the stop)."""
    try:
        asked = None if stop is None else stop.is_set
        worker(rdv, cfg, run_path, stop=asked, local_rank=rdv.rank, heartbeat=True)
    except Preempted:
        return


class StopSignals:
    """While the workers run: SIGINT (Ctrl-C), SIGTERM (``kill``, ``timeout``) and SIGHUP (a
    closed terminal or SSH session) set ``event``, which the workers ask at every round's
    end: they checkpoint there and stop. A second signal stops them at once. A signal
    already ignored (``nohup``, a background job) stays ignored; only the main thread can
    take signals (a launcher in another thread leaves them as they are)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, event: Any) -> None:
        self.event = event
        self.received: int | None = None
        self.announced = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) != signal.SIG_IGN:
                    self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # the second: stop now (start_ranks ends the ranks)
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.received = signum
        self.event.set()

    def announce(self) -> None:
        """Say once, from the main loop (not the handler), that a stop was asked for."""
        if self.received is None or self.announced:
            return
        self.announced = True
        name = signal.Signals(self.received).name
        with contextlib.suppress(OSError):  # a terminal that hung up
            print(
                f"[stop] {name}: the workers checkpoint at the end of their round and stop "
                "(a second signal stops them at once, without a checkpoint)",
                flush=True,
            )


def spawn_local(cfg: RunConfig, run: RunDir) -> Summary:
    """Start ``workers`` processes, watch them, and return the run's summary (with
    ``launcher.link``, every rank in its own namespace behind a shaped link)."""
    tail = LogTail(run.log_file)
    log.info(
        "[start] %s workers=%d seed=%d -> %s", cfg.protocol.name, cfg.workers, cfg.seed, run.path
    )
    before = _mtime(run.summary)
    beats = run.path / heartbeat_folder
    shutil.rmtree(beats, ignore_errors=True)  # an earlier attempt's
    beats.mkdir()
    watch = StallWatch(beats, cfg.launcher.stall_warn_s, cfg.launcher.stall_timeout_s)
    try:
        outcome, signum = _watch_ranks(cfg, run, [tail.relay, watch.poll])
    except Stalled as stalled:
        ended: Summary = {**failed_summary(cfg, str(stalled), stalled=True), **watch.marks()}
        return write_summary(run, ended)
    finally:
        shutil.rmtree(beats, ignore_errors=True)
    written = run.read_summary() if _mtime(run.summary) != before else None  # this attempt's
    stopped_by: Summary = {} if signum is None else {"signal": signal.Signals(signum).name}
    if not (outcome.failed or outcome.interrupted) and written is not None:
        if watch.marks():  # it stalled and went on: its times are no clean measurement
            written = write_summary(run, {**written, **watch.marks()})
        return {**written, "wall_s": outcome.wall_s, **stopped_by}
    if signum is not None and not outcome.failed:
        summary = stopped_summary(cfg, run, signum, outcome)
    else:
        error = describe_failure(run, outcome)
        summary = {**failed_summary(cfg, error, wall_s=outcome.wall_s), **stopped_by}
    return write_summary(run, summary)


def _watch_ranks(
    cfg: RunConfig, run: RunDir, watchers: list[Callable[[], None]]
) -> tuple[Outcome, int | None]:
    """Run the ranks under the stop signals, calling ``watchers`` while they run; how
    they ended and the stop signal received, if any."""
    event = spawn_context().Event()
    with StopSignals(event) as signals:

        def poll() -> None:
            signals.announce()
            for watcher in watchers:
                watcher()

        args = (cfg, str(run.path), event)
        outcome = start_ranks(local_worker, cfg.workers, args, cfg.launcher.link, on_poll=poll)
    return outcome, signals.received


def write_summary(run: RunDir, summary: Summary) -> Summary:
    """Write the launcher's summary of a run; if the run folder cannot be written (full,
    read-only, gone), the summary returned says so next to the workers' reason."""
    try:
        run.write_summary(summary)
    except OSError as err:
        why = f"summary.json could not be written ({err.strerror or err})"
        summary = {**summary, "error": f"{summary.get('error') or summary['status']}; {why}"}
    return summary


def _mtime(path: Path) -> int | None:
    with contextlib.suppress(OSError):
        return path.stat().st_mtime_ns
    return None


def stopped_summary(cfg: RunConfig, run: RunDir, signum: int, outcome: Outcome) -> Summary:
    """The summary of a run a signal stopped (``status: stopped``, the signal named)."""
    name = signal.Signals(signum).name
    step = Checkpoints(run.path, 0).latest_step() if cfg.train.checkpoint else None
    how = "at once (a second signal)" if outcome.interrupted else "at the end of a round"
    if step:
        then = f"its checkpoint at step {step} is kept; the same command resumes there"
    else:
        then = "no checkpoint to resume from; the same command starts afresh"
    error = f"stopped by {name} {how}: {then}"
    summary: Summary = {
        **failed_summary(cfg, error, wall_s=outcome.wall_s),
        "status": "stopped",
        "signal": name,
        "checkpoint_step": step,
    }
    return summary


class LogTail:
    """Relays the lines rank 0 appends to ``run.log`` to this process's ``suite`` logger
    (under Hydra: the console and the job's log file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0  # a resume: new lines only
        self.partial = ""

    def relay(self) -> None:
        try:
            with open(self.path) as f:
                f.seek(self.offset)
                text = f.read()
                self.offset = f.tell()
        except OSError:
            return
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()  # an unfinished line waits for its end
        for line in lines:
            if line:
                log.info(line)


def describe_failure(run: RunDir, outcome: Outcome) -> str:
    """The root cause of a failed run.

    A rank killed by a signal (kill -9, the OOM killer) writes nothing, and its peers then
    fail on broken connections; so a signal death seen first wins, and otherwise the
    earliest error file written.
    """
    if outcome.interrupted:
        return "interrupted by the user"
    for rank, code in outcome.failed:
        if code < 0:
            return (
                f"rank {rank} was killed by {signal_name(code)}: out of memory or killed externally"
            )
    errors = sorted(run.error_files(), key=lambda f: f.stat().st_mtime_ns)
    if errors:
        first = errors[0]
        rank = int(first.stem.removeprefix("error-rank"))
        text = first.read_text().strip().splitlines()
        others = f"; then {', '.join(e.stem for e in errors[1:])}" if len(errors) > 1 else ""
        # The pipe's line when the file is empty: the disk may have been full.
        last = text[-1] if text else outcome.errors.get(rank, "unknown error")
        return f"{first.stem}: {last} (traceback in {first.name}{others})"
    if outcome.errors:  # no error file at all
        rank = min(outcome.errors)
        return f"rank {rank}: {outcome.errors[rank]}"
    if outcome.failed:
        return f"rank {outcome.failed[0][0]} exited with code {outcome.failed[0][1]}"
    return "workers exited without writing a summary"


def _print_summary(run: RunDir, s: Summary) -> None:
    if s.get("status") == "completed" or s.get("status") == "diverged":
        acc = s.get("final_test_acc")
        print(
            f"[{s['status']}] {s.get('protocol')} workers={s.get('workers')} seed={s.get('seed')}: "
            f"test acc {acc if acc is None else f'{acc:.4f}'}, "
            f"train {s.get('train_s') or 0:.1f}s (comm {s.get('comm_s') or 0:.1f}s), "
            f"{(s.get('bytes') or 0) / 1e9:.4f} GB communicated, "
            f"wall {s.get('wall_s', 0):.1f}s -> {run.path}"
        )
    else:
        print(f"[{s.get('status')}] {run.path}: {s.get('error')}")
