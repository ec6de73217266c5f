"""The one process spawner: ``world`` real ranks on this machine, watched.

Every local multi-process run goes through :func:`start_ranks`: the launcher's worker
processes (``suite.launch``) and the test and benchmark harness :func:`run_ranks`. Ranks
meet at a TCP store owned by the caller on a free port (on loopback, or on an emulated
cluster with ``link``); each rank dies with its parent (a launcher killed with kill -9
leaves no rank waiting on a collective); the first rank to fail (non-zero exit, a
signal, the OOM killer) makes the caller stop the others at once. Each rank runs in its
own process group, so signals meant for the launcher's group reach the launcher only.

Ranks are forked from a fork server that has imported torch and what a rank needs once
(``suite._forkserver``), so a rank starts in milliseconds rather than the seconds those
imports take; each rank still gets the caller's environment, working directory and
``sys.path`` as they are when it starts, as a freshly spawned process would. Where
Python has no fork server, ranks are spawned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from suite import netem
from suite._forkserver import context
from suite.dist import Comm, Rendezvous, destroy_process_group, die_with_parent, init_process_group


@dataclass
class Outcome:
    """How the ranks ended."""

    failed: list[tuple[int, int]] = field(default_factory=list)  # (rank, exit code) first seen
    interrupted: bool = False  # Ctrl-C in the launcher
    timed_out: bool = False
    wall_s: float = 0.0
    #: The last line of each failed rank's traceback, sent over a pipe: it arrives even
    #: when the rank could not write its error file (a full disk).
    errors: dict[int, str] = field(default_factory=dict)


def _take_environment(environ: dict[str, str]) -> dict[str, str]:
    os.environ.clear()
    os.environ.update(environ)
    return environ


class _Environment(dict[str, str]):
    """The caller's environment, as a rank's first argument: unpickling it in the rank
    applies it, before the rest of the arguments is unpickled (which imports the
    target's modules and plugins, and they may read it). A forked rank would otherwise
    have the fork server's environment, from whenever the server started."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_take_environment, (dict(self),))


def _entry(
    environ: dict[str, str],
    target: Callable[..., None],
    rdv: Rendezvous,
    netns: str | None,
    args: tuple[Any, ...],
    report: Connection,
) -> None:
    """Process entry (``environ`` is already applied): die with the parent, enter the
    rank's namespace, run ``target``. A failure's last traceback line goes to the parent
    over ``report``. Exits with os._exit: results are already on disk, and C++ static
    teardown of gloo/store threads at interpreter exit can abort a finished rank."""
    code = 0
    try:
        die_with_parent()
        # Its own process group: a terminal's Ctrl-C or hangup and `timeout` (which signals
        # its whole group) reach the launcher alone, which stops the ranks in order.
        os.setpgid(0, 0)
        netem.enter(netns)
        target(rdv, *args)
    except BaseException as err:
        code = 1
        lines = traceback.format_exception_only(type(err), err)
        with contextlib.suppress(OSError):
            report.send(lines[-1].strip() if lines else repr(err))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def start_ranks(
    target: Callable[..., None],
    world: int,
    args: tuple[Any, ...] = (),
    link: str | None = None,
    poll_s: float = 0.05,
    timeout_s: float | None = None,
    on_poll: Callable[[], None] | None = None,
) -> Outcome:
    """Run ``target(rendezvous, *args)`` in ``world`` spawned processes named ``rank<r>``
    and wait; stop every rank as soon as one fails (or on Ctrl-C, or after
    ``timeout_s``). ``target`` must be importable (spawn pickles it by name);
    ``on_poll`` is called while waiting (and once at the end), e.g. to relay logs."""
    with netem.endpoints(world, link) as (host, spaces):
        store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False)
        ctx = context()
        pipes = [ctx.Pipe(duplex=False) for _ in range(world)]
        rdvs = [Rendezvous(r, world, host, store.port) for r in range(world)]
        env = _Environment(os.environ)
        procs = [
            ctx.Process(
                target=_entry,
                args=(env, target, rdvs[r], spaces[r], args, pipes[r][1]),
                name=f"rank{r}",
            )
            for r in range(world)
        ]
        outcome = Outcome()
        started = time.perf_counter()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            for p in procs:
                p.start()
            while not outcome.failed and any(p.exitcode is None for p in procs):
                time.sleep(poll_s)
                if on_poll is not None:
                    on_poll()
                outcome.failed = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode]
                if deadline is not None and time.monotonic() > deadline:
                    outcome.timed_out = True
                    break
        except KeyboardInterrupt:
            outcome.interrupted = True
        finally:
            stop(procs)
            del store
            if on_poll is not None:
                on_poll()
        outcome.wall_s = time.perf_counter() - started
        for rank, (reader, _) in enumerate(pipes):
            if reader.poll():
                with contextlib.suppress(EOFError, OSError):
                    outcome.errors[rank] = str(reader.recv())
        return outcome


def stop(procs: list[Any], grace_s: float = 3.0) -> None:
    """Terminate every live process; kill what does not exit within the grace period."""
    procs = [p for p in procs if p.pid is not None]  # never started: nothing to stop
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _harness_rank(
    rdv: Rendezvous, fn: Callable[..., Any], out: str, threads: int, args: tuple[Any, ...]
) -> None:
    torch.set_num_threads(threads)
    try:
        init_process_group(rdv, torch.device("cpu"), 300)
        result = fn(rdv.rank, Comm(rdv.rank, rdv.world_size, torch.device("cpu")), *args)
        torch.save(result, f"{out}.rank{rdv.rank}")
    except BaseException:
        Path(f"{out}.rank{rdv.rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        destroy_process_group()


def run_ranks(
    fn: Callable[..., Any],
    world: int,
    tmp: Path,
    *args: Any,
    threads: int = 1,
    link: str | None = None,
) -> list[Any]:
    """Run ``fn(rank, comm, *args)`` in ``world`` real gloo processes on CPU; return each
    rank's (picklable) result. For tests and benchmarks; ``fn`` must be importable.
    ``link`` (e.g. ``"1gbit"``, root only): each rank behind its own emulated link."""
    out = str(Path(tmp) / f"ranks-{fn.__name__}-{os.getpid()}")
    outcome = start_ranks(_harness_rank, world, (fn, out, threads, args), link, timeout_s=600)
    errors = [Path(f"{out}.rank{r}.err") for r in range(world)]
    texts = [f.read_text() for f in errors if f.exists()]
    if texts or outcome.failed or outcome.timed_out or outcome.interrupted:
        codes = dict(outcome.failed)
        why = "timed out" if outcome.timed_out else f"exit codes {codes}"
        raise RuntimeError(f"ranks failed ({why}):\n" + "\n".join(texts))
    return [torch.load(f"{out}.rank{r}", weights_only=False) for r in range(world)]


def signal_name(code: int) -> str:
    """``SIGKILL (signal 9)`` for a process's negative exit code."""
    return f"{signal.Signals(-code).name} (signal {-code})"
