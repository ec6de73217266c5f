"""THE training loop, identical for every protocol.

Loss, data order, seeding, learning-rate schedule, evaluation cadence and timing are
the same for all protocols; a protocol only decides what is trained in a round and what
is communicated (``protocols.base``). The clock covers training only: it stops for
evaluation, and the reported time is the maximum over ranks (device sync first).

``train`` reads as the loop; resuming, checkpointing, evaluating and the summary are
the helpers below it, and everything the loop carries from step to step is one
:class:`LoopState`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from protocols.base import OptimizerFactory, Protocol
from suite.checkpoint import Checkpoints
from suite.compiled import Compiler
from suite.config import RunConfig
from suite.data import TrainBatches, eval_batches
from suite.dist import Comm
from suite.loggers import MetricLogger, open_logger
from suite.optimizers import Optimizer
from suite.problem import build_protocol, load_problem, model_is_conv
from suite.record import RunDir, Status, Summary

log = logging.getLogger("suite")

#: Comm's counters, saved and restored with a checkpoint.
COMM_COUNTERS = ("bytes_payload", "bytes_paper", "bytes_moved", "seconds")

#: For kill tests: ``"<rank>"`` or ``"<rank>:<n>"`` makes that rank stand still (for at most
#: a minute) after its first (n-th) checkpoint, so the test kills it there however fast the run.
HOLD_ENV = "COMMBENCH_TEST_HOLD_RANK_AFTER_CHECKPOINT"


@dataclass
class TrainResult:
    """What a rank ends with: the run's summary and the final global model (and the
    protocol, for the contract kit's look at what each rank holds)."""

    summary: Summary
    model: nn.Module
    protocol: Protocol[Any] | None = None


class Preempted(Exception):
    """Training stopped early on request (the scheduler's preemption or time-limit signal),
    after every rank saved a checkpoint to resume from."""


@dataclass(frozen=True)
class Budget:
    """Steps per worker and the evaluation points, from the budget in data-epochs."""

    steps: int
    samples_per_step: int
    num_train: int
    eval_every: float

    @classmethod
    def of(cls, cfg: RunConfig, num_train: int, same_batch: bool = False) -> Budget:
        per_step = cfg.data.batch_size * (1 if same_batch else cfg.workers)
        steps = max(1, math.ceil(cfg.train.data_epochs * num_train / per_step))
        return cls(steps, per_step, num_train, cfg.train.eval_every)

    def epoch(self, step: int) -> float:
        """Data-epochs done after ``step`` steps of every worker."""
        return step * self.samples_per_step / self.num_train

    def eval_index(self, step: int) -> int:
        """How many evaluation points lie at or before ``step`` (evaluate when it grows)."""
        return int(self.epoch(step) / self.eval_every + 1e-9)


@dataclass
class LoopState:
    """Everything the loop carries from round to round (and a checkpoint restores)."""

    step: int = 0
    rnd: int = 0
    last_eval: int = 0  # evaluation points passed
    last_checkpoint: int = 0  # checkpoint points passed
    rows: int = 0  # metric rows rank 0 has written
    best_acc: float = -1.0
    final: dict[str, Any] = field(default_factory=dict)  # the last metrics row
    loss_count: int = 0  # steps since the last evaluation (their loss sum: Run.loss_sum)
    clock: float = 0.0  # training seconds (evaluation excluded)
    lr: float = 0.0


def make_optimizer_factory(cfg: Optimizer) -> OptimizerFactory:
    """A function params → the configured torch optimizer (``Optimizer.build``);
    protocols build theirs with it."""
    return cfg.build


def learning_rate(cfg: Optimizer, step: int, total: int) -> float:
    """The schedule as a function of the global step (so rebuilt optimizers follow it)."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / total))
    passed = sum(step >= m * total for m in cfg.milestones)
    return float(cfg.lr * cfg.gamma**passed)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    on_batch: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """Mean test loss and accuracy over fixed batches (``on_batch`` after each)."""
    was_training = model.training
    model.eval()
    loss, correct, count = 0.0, 0, 0
    for x, y in batches:
        out = model(x)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        count += len(y)
        if on_batch is not None:
            on_batch()
    model.train(was_training)
    return loss / count, correct / count


class Clock:
    """Accumulated training time; stops while evaluating. Syncs the device when stopping."""

    def __init__(self, device: torch.device, total: float = 0.0) -> None:
        self.device, self.total = device, total
        self._start: float | None = None

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self._start is not None:
            self.total += time.perf_counter() - self._start
            self._start = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stopped for the block (evaluation, a checkpoint), running again after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()


@dataclass
class Run:
    """One rank's run: what the loop and its helpers share."""

    cfg: RunConfig
    comm: Comm
    device: torch.device
    model: nn.Module
    protocol: Protocol[Any]
    batches: TrainBatches
    test: list[tuple[torch.Tensor, torch.Tensor]]
    budget: Budget
    record: RunDir | None  # rank 0 writes metrics and summary
    checkpoints: Checkpoints | None
    loss_sum: torch.Tensor  # on the device: no host sync per step
    logger: MetricLogger | None = None  # rank 0's metric logger (logger=...)
    beat: Callable[[int], None] | None = None  # the rank's heartbeat (local runs)
    started: float = 0.0  # wall clock when this attempt's first step began
    first_step: int = 0  # the step this attempt started from (after a resume)
    compiler: Compiler | None = None  # train.compile


def train(
    cfg: RunConfig,
    comm: Comm,
    device: torch.device,
    record: RunDir | None = None,
    checkpoints: Checkpoints | None = None,
    stop: Callable[[], bool] | None = None,
    beat: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``cfg`` on this rank; rank 0 (``record`` given) writes metrics and summary.

    With ``checkpoints`` every rank saves its state at each evaluation, and a run that
    finds a complete checkpoint resumes from it (rank 0 drops metric rows written later).
    With ``stop``, the ranks ask it at every round's end and agree: if any rank says yes,
    all save a checkpoint there and raise ``Preempted``. ``beat(step)``: each step's
    (and rank 0's evaluation batches') heartbeat, for the launcher's stall watch."""
    run = _set_up(cfg, comm, device, record, checkpoints)
    run.beat = beat
    state = _resume(run) if checkpoints is not None else LoopState()
    clock, progress = Clock(device, state.clock), _progress(run, state.step)
    run.started, run.first_step = time.time(), state.step
    status: Status = "completed"
    if record is not None:
        _announce(run, record, state.step)
    clock.start()
    while state.step < run.budget.steps:
        with record_function("round.begin"):
            work = run.protocol.begin_round(state.rnd)
        for _ in range(min(run.protocol.local_steps, run.budget.steps - state.step)):
            _step(run, work, state)
        with record_function("round.end"):
            run.protocol.end_round(state.rnd, work)
        state.rnd += 1
        if progress is not None:
            progress.update(state.step - progress.n)
        if run.budget.eval_index(state.step) > state.last_eval or state.step == run.budget.steps:
            with clock.paused():
                finite = _evaluate(run, state, clock)
            if not finite:
                status = "diverged"
                break
        if checkpoints is not None and _checkpoint_due(run, state):
            with clock.paused():
                _save(run, state, clock)
        if stop is not None and state.step < run.budget.steps and _agree(comm, stop()):
            clock.stop()
            if checkpoints is not None:
                _save(run, state, clock)
            raise Preempted(f"stopped at step {state.step} of {run.budget.steps} on request")
    clock.stop()
    if progress is not None:
        progress.close()
    return _finish(run, state, status)


def _announce(run: Run, record: RunDir, step: int) -> None:
    """Rank 0 opens its metric logger and says where the run starts."""
    cfg = run.cfg
    run.logger = open_logger(cfg, record.path, record.read_metrics())
    what = "resuming at" if step else "starting"
    line = (
        f"[{cfg.protocol.name} w{cfg.workers} s{cfg.seed}] {what} step {step} of "
        f"{run.budget.steps} (l = {run.protocol.local_steps}, {cfg.train.data_epochs:g} "
        f"data-epochs, evaluation every {cfg.train.eval_every:g})"
    )
    record.log(line)
    log.info(line)


def _set_up(
    cfg: RunConfig,
    comm: Comm,
    device: torch.device,
    record: RunDir | None,
    checkpoints: Checkpoints | None,
) -> Run:
    """Data, model (rank 0's weights on every rank), protocol, batches, budget."""
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    problem = load_problem(cfg, device)
    comm.broadcast_(list(problem.model.state_dict().values()))  # identical start (uncounted)
    protocol = build_protocol(cfg)
    protocol.setup(problem.model, comm, make_optimizer_factory(cfg.optim), problem.info)
    same = protocol.same_batch_on_all_ranks  # layer-parallel: every rank gets one batch
    batches = TrainBatches(
        problem.data,
        0 if same else comm.rank,
        1 if same else comm.world_size,
        cfg.data.batch_size,
        cfg.data.sharding,
        cfg.seed,
        device,
        cfg.data.augment,
        channels_last=cfg.train.channels_last and model_is_conv(problem.model),
    )
    test = eval_batches(problem.data, cfg.data.eval_batch_size, device) if record else []
    budget = Budget.of(cfg, problem.data.num_train, same)
    loss_sum = torch.zeros((), device=device)
    return Run(
        cfg=cfg,
        comm=comm,
        device=device,
        model=problem.model,
        protocol=protocol,
        batches=batches,
        test=test,
        budget=budget,
        record=record,
        checkpoints=checkpoints,
        loss_sum=loss_sum,
        compiler=Compiler() if cfg.train.compile else None,
    )


def _step(run: Run, work: Any, state: LoopState) -> None:
    """One optimizer step of this worker's module, under the global schedule."""
    with record_function("step.data"):  # the batch, augmented on the device
        x, y = next(run.batches)
    if run.compiler is not None:
        run.compiler(work.module)
    state.lr = learning_rate(run.cfg.optim, state.step, run.budget.steps)
    for group in work.optimizer.param_groups:
        group["lr"] = state.lr
    bf16 = run.cfg.train.precision == "bf16"
    with (
        record_function("step.forward"),
        torch.autocast(run.device.type, torch.bfloat16, enabled=bf16),
    ):
        loss = work.loss(x, y)
    with record_function("step.backward"):
        work.optimizer.zero_grad(set_to_none=True)
        loss.backward()
    with record_function("step.after_backward"):  # ddp's all-reduce, a compressor's work
        run.protocol.after_backward(work)
    with record_function("step.optimizer"):
        work.optimizer.step()
    run.loss_sum += loss.detach()
    state.loss_count += 1
    state.step += 1
    if run.beat is not None:
        run.beat(state.step)


def _evaluate(run: Run, state: LoopState, clock: Clock) -> bool:
    """Reduce the measurements, evaluate the global model on rank 0 and write the row
    (clock stopped). False if the training loss is no longer finite."""
    state.last_eval = run.budget.eval_index(state.step)
    row = _measure(run, state, clock)
    run.loss_sum.zero_()
    state.loss_count = 0
    with run.comm.uncounted():
        run.protocol.gather_for_eval()
    if run.record is not None:
        beat = run.beat
        on_batch = None if beat is None else lambda: beat(state.step)
        row["test_loss"], row["test_acc"] = evaluate(run.protocol.eval_model(), run.test, on_batch)
        state.best_acc = max(state.best_acc, row["test_acc"])
        run.record.append_metrics(row)
        state.rows += 1
        _report_progress(run, row)
        if run.logger is not None:
            run.logger.log(row)
    state.final = row
    run.comm.barrier()
    return math.isfinite(row["train_loss"])


def _measure(run: Run, state: LoopState, clock: Clock) -> dict[str, Any]:
    """One metrics row, reduced over ranks (measurement collectives are not counted)."""
    comm = run.comm
    (train_s,) = comm.reduce_stats([clock.total], op="max")
    rank_s, comm_s, nbytes, moved, payload, losses, count = comm.reduce_stats(
        [
            clock.total,
            comm.seconds,
            comm.bytes_paper,
            comm.bytes_moved,
            comm.bytes_payload,
            float(run.loss_sum),
            state.loss_count,
        ]
    )
    world = comm.world_size
    return {
        "round": state.rnd,
        "step": state.step,
        "epoch": run.budget.epoch(state.step),
        "train_s": train_s,
        "compute_s": max(0.0, (rank_s - comm_s) / world),
        "comm_s": comm_s / world,
        "bytes": int(nbytes),
        "bytes_moved": int(moved),
        "bytes_payload": int(payload),
        "lr": state.lr,
        "train_loss": losses / max(count, 1),
        **{f"stats.{k}": v for k, v in protocol_stats(run).items()},
    }


def protocol_stats(run: Run) -> dict[str, float]:
    """The protocol's ``stats()``, each the largest over ranks (a measurement collective:
    every rank calls it; not counted)."""
    stats = run.protocol.stats()
    names = sorted(stats)
    values = run.comm.reduce_stats([stats[n] for n in names], op="max") if names else []
    return dict(zip(names, values, strict=True))


def _report_progress(run: Run, row: dict[str, Any]) -> None:
    """One line per evaluation, for a person watching (a terminal, a SLURM ``.out``
    file, Hydra's job log): to ``run.log`` in the run folder, which the local launcher
    relays, and to the ``suite`` logger, which is Hydra's in a scheduler's task."""
    budget = run.budget
    elapsed = time.time() - run.started
    done = row["step"] - run.first_step
    eta = elapsed / done * (budget.steps - row["step"]) if done > 0 else math.nan
    line = (
        f"[{run.cfg.protocol.name} w{run.cfg.workers} s{run.cfg.seed}] round {row['round']} "
        f"| epoch {row['epoch']:.2f}/{run.cfg.train.data_epochs:g} "
        f"| test acc {row['test_acc']:.4f} | train loss {row['train_loss']:.4f} "
        f"| comm {row['comm_s']:.1f} s | {row['bytes'] / 1e9:.3f} GB "
        f"| elapsed {elapsed:.1f} s | ETA {eta:.1f} s"
    )
    assert run.record is not None
    run.record.log(line)
    log.info(line)


def _checkpoint_due(run: Run, state: LoopState) -> bool:
    """Whether a ``train.checkpoint_every`` point was passed (never at the very end: a
    finished run keeps no state)."""
    every = run.cfg.train.checkpoint_every
    index = int(run.budget.epoch(state.step) / every + 1e-9)
    if index <= state.last_checkpoint or state.step >= run.budget.steps:
        return False
    state.last_checkpoint = index
    return True


def _agree(comm: Comm, mine: bool) -> bool:
    """True on every rank if any rank says so (one tiny uncounted all-reduce)."""
    return comm.reduce_stats([float(mine)], op="max")[0] > 0


def _save(run: Run, state: LoopState, clock: Clock) -> None:
    """Every rank writes its state; rank 0 commits the set once all have (clock stopped)."""
    assert run.checkpoints is not None
    state.clock = clock.total
    snapshot = {
        "model": run.model.state_dict(),
        "protocol": run.protocol.state_dict(),
        "batches": run.batches.state_dict(),
        "loop": dataclasses.asdict(state),
        "loss_sum": run.loss_sum.clone(),
        "comm": {n: getattr(run.comm, n) for n in COMM_COUNTERS},
        "rng": torch.get_rng_state(),
    }
    run.checkpoints.save(state.step, snapshot)
    run.comm.barrier()  # every rank has written this step before it becomes latest
    if run.comm.rank == 0:
        run.checkpoints.commit(state.step, run.comm.world_size)
    if HOLD_ENV in os.environ:
        _hold_if_asked(run.comm.rank)


def _hold_if_asked(rank: int) -> None:
    """Count this checkpoint against ``HOLD_ENV``; at the n-th on the named rank, stand still
    while rank 0 commits it and the test kills this rank."""
    who, _, nth = os.environ[HOLD_ENV].partition(":")
    if int(who) != rank:
        return
    left = int(nth or 1) - 1
    if left > 0:
        os.environ[HOLD_ENV] = f"{who}:{left}"
        return
    os.environ.pop(HOLD_ENV)
    time.sleep(60)


def _resume(run: Run) -> LoopState:
    """Restore the newest checkpoint set every rank can read; a fresh state if none.

    A set that fails to load on any rank (truncated, garbled) is skipped for the one
    before it, on all ranks alike; if none is readable the run stops with the reason.
    """
    assert run.checkpoints is not None
    candidates = run.checkpoints.candidates()
    if not candidates:
        return LoopState()
    errors = []
    for at in candidates:
        try:
            snapshot: dict[str, Any] | None = run.checkpoints.load(at)
        except RuntimeError as err:
            snapshot = None
            errors.append(str(err))
        if not _agree(run.comm, snapshot is None):
            assert snapshot is not None
            if errors:
                print(f"[resume] rank {run.comm.rank}: {'; '.join(errors)}; using step {at}")
            run.model.load_state_dict(snapshot["model"])
            run.protocol.load_state_dict(snapshot["protocol"])
            run.batches.load_state_dict(snapshot["batches"])
            for name, value in snapshot["comm"].items():
                setattr(run.comm, name, value)
            torch.set_rng_state(snapshot["rng"])
            run.loss_sum.copy_(snapshot["loss_sum"])
            state = LoopState(**snapshot["loop"])
            if run.record is not None:
                run.record.truncate_metrics(state.rows)
            return state
    raise RuntimeError(
        f"no readable checkpoint set among steps {candidates}"
        + (f": {'; '.join(errors)}" if errors else " (unreadable on another rank)")
    )


def _finish(run: Run, state: LoopState, status: Status) -> TrainResult:
    """The run's summary (rank 0 writes it and drops the checkpoints)."""
    stats = protocol_stats(run)
    (peak,) = run.comm.reduce_stats([float(peak_memory(run.device))], op="max")
    final = state.final
    summary: Summary = {
        "status": status,
        "protocol": run.cfg.protocol.name,
        "workers": run.cfg.workers,
        "seed": run.cfg.seed,
        "data": run.cfg.data.name,
        "final_test_acc": final.get("test_acc"),
        "best_test_acc": state.best_acc if state.best_acc >= 0 else None,
        "final_test_loss": final.get("test_loss"),
        "train_s": final.get("train_s"),
        "compute_s": final.get("compute_s"),
        "comm_s": final.get("comm_s"),
        "bytes": final.get("bytes"),
        "bytes_moved": final.get("bytes_moved"),
        "bytes_payload": final.get("bytes_payload"),
        "steps": state.step,
        "rounds": state.rnd,
        "data_epochs": run.budget.epoch(state.step),
        "protocol_stats": stats,
        "peak_memory_bytes": int(peak),  # the largest rank's (GPU: allocated; CPU: RSS)
        "threads_per_worker": torch.get_num_threads(),  # intra-op threads this attempt used
        "started_unix": run.started,
    }
    if run.compiler is not None:
        summary["compiled_graphs"] = run.compiler.graphs()  # this rank's (rank 0's)
    if run.record is not None:
        run.record.write_summary(summary)
        if run.logger is not None:
            run.logger.finish(summary)
        if run.checkpoints is not None:
            run.checkpoints.remove()  # a finished run keeps its results, not its state
    return TrainResult(summary, run.protocol.eval_model(), run.protocol)


def peak_memory(device: torch.device) -> int:
    """This rank's peak memory: allocated on its GPU, else its process's resident set."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _progress(run: Run, done: int) -> Any:
    cfg = run.cfg
    if not (run.record is not None and cfg.launcher.progress and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    bar = tqdm(total=run.budget.steps, desc=f"{cfg.protocol.name} w{cfg.workers}", unit="step")
    bar.update(done)
    return bar
