"""THE training loop, identical for every protocol.

Loss, data order, seeding, learning-rate schedule, evaluation cadence and timing are
the same for all protocols; a protocol only decides what is trained in a round and what
is communicated (``protocols.base``). The clock covers training only: it stops for
evaluation, and the reported time is the maximum over ranks (device sync first).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import protocols
from protocols.base import OptimizerFactory, ProblemInfo
from suite.checkpoint import Checkpoints
from suite.config import OptimConfig, RunConfig
from suite.data import ImageDataset, TrainBatches, eval_batches, load_dataset
from suite.dist import Comm
from suite.models import build_model
from suite.record import RunDir

#: Comm's counters, saved and restored with a checkpoint.
COMM_COUNTERS = ("bytes_payload", "bytes_paper", "bytes_moved", "seconds")


@dataclass
class TrainResult:
    """What a rank ends with: the run's summary and the final global model."""

    summary: dict[str, Any]
    model: nn.Module


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


def make_optimizer_factory(cfg: OptimConfig) -> OptimizerFactory:
    """A function params → optimizer; protocols build optimizers with it."""
    if cfg.name != "sgd":
        raise ValueError(f"unknown optimizer {cfg.name!r}; valid: sgd")

    def make(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )

    return make


def learning_rate(cfg: OptimConfig, step: int, total: int) -> float:
    """The schedule as a function of the global step (so rebuilt optimizers follow it)."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / total))
    if cfg.schedule == "step":
        passed = sum(step >= m * total for m in cfg.milestones)
        return float(cfg.lr * cfg.gamma**passed)
    raise ValueError(f"unknown schedule {cfg.schedule!r}; valid: step, cosine, constant")


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[float, float]:
    """Mean test loss and accuracy over fixed batches."""
    was_training = model.training
    model.eval()
    loss, correct, count = 0.0, 0, 0
    for x, y in batches:
        out = model(x)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        count += len(y)
    model.train(was_training)
    return loss / count, correct / count


class Clock:
    """Accumulated training time; stops while evaluating. Syncs the device when stopping."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.total = device, 0.0
        self._start: float | None = None

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self._start is not None:
            self.total += time.perf_counter() - self._start
            self._start = None


def problem_info(cfg: RunConfig, ds: ImageDataset, model: nn.Module) -> ProblemInfo:
    return ProblemInfo(
        model,
        ds.name,
        ds.num_train,
        cfg.data.batch_size,
        cfg.data.sharding,
        cfg.seed,
        ds.image_size,
        cfg.train.data_epochs,
    )


def build(cfg: RunConfig, ds: ImageDataset, device: torch.device) -> nn.Module:
    """The shared model, seeded identically on every rank."""
    torch.manual_seed(cfg.seed)
    shape = tuple(ds.train_x.shape[1:])
    return build_model(cfg.model, ds.in_channels, ds.num_classes, shape).to(device)


def train(
    cfg: RunConfig,
    comm: Comm,
    device: torch.device,
    record: RunDir | None = None,
    checkpoints: Checkpoints | None = None,
    stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train ``cfg`` on this rank; rank 0 (``record`` given) writes metrics and summary.

    With ``checkpoints`` every rank saves its state at each evaluation, and a run that
    finds a complete checkpoint resumes from it (rank 0 drops metric rows written later).
    With ``stop``, the ranks ask it at every round's end and agree: if any rank says yes,
    all save a checkpoint there and raise ``Preempted``.
    """
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    ds = load_dataset(cfg.data)
    model = build(cfg, ds, device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    comm.broadcast_(list(model.state_dict().values()))  # identical start (not counted)
    protocol = protocols.build(cfg.protocol)
    protocol.setup(model, comm, make_optimizer_factory(cfg.optim), problem_info(cfg, ds, model))
    same = protocol.same_batch_on_all_ranks  # layer-parallel: every rank gets one batch
    batches = TrainBatches(
        ds,
        0 if same else comm.rank,
        1 if same else comm.world_size,
        cfg.data.batch_size,
        cfg.data.sharding,
        cfg.seed,
        device,
        cfg.data.augment,
    )
    test = eval_batches(ds, cfg.data.eval_batch_size, device) if record is not None else []
    budget = Budget.of(cfg, ds.num_train, same)
    clock = Clock(device)
    progress = _progress(budget.steps, cfg, record is not None)

    step, rnd, last_eval, rows = 0, 0, 0, 0
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    best_acc = -1.0
    final: dict[str, Any] = {}
    status = "completed"
    state = _load_checkpoint(checkpoints, comm) if checkpoints is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        protocol.load_state_dict(state["protocol"])
        batches.load_state_dict(state["batches"])
        step, rnd, last_eval, rows, best_acc, final, loss_count = state["loop"]
        loss_sum.copy_(state["loss_sum"])
        clock.total = state["clock"]
        for name, value in state["comm"].items():
            setattr(comm, name, value)
        torch.set_rng_state(state["rng"])
        if record is not None:
            record.truncate_metrics(rows)

    def save(at: int) -> None:
        """Every rank writes its state; rank 0 commits the set once all have (clock stopped)."""
        assert checkpoints is not None
        snapshot = {
            "model": model.state_dict(),
            "protocol": protocol.state_dict(),
            "batches": batches.state_dict(),
            "loop": (step, rnd, last_eval, rows, best_acc, final, loss_count),
            "loss_sum": loss_sum.clone(),
            "clock": clock.total,
            "comm": {n: getattr(comm, n) for n in COMM_COUNTERS},
            "rng": torch.get_rng_state(),
        }
        checkpoints.save(at, snapshot)
        comm.barrier()  # every rank has written this step before it becomes latest
        if comm.rank == 0:
            checkpoints.commit(at, comm.world_size)

    bf16 = cfg.train.precision == "bf16"
    started = time.time()  # when this attempt's first step began (for launch latency)
    clock.start()
    while step < budget.steps:
        work = protocol.begin_round(rnd)
        for _ in range(min(protocol.local_steps, budget.steps - step)):
            x, y = next(batches)
            if cfg.train.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = learning_rate(cfg.optim, step, budget.steps)
            for group in work.optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                loss = work.loss(x, y)
            work.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            protocol.after_backward(work)
            work.optimizer.step()
            loss_sum += loss.detach()
            loss_count += 1
            step += 1
        protocol.end_round(rnd, work)
        rnd += 1
        if progress is not None:
            progress.update(step - progress.n)
        if budget.eval_index(step) > last_eval or step == budget.steps:
            clock.stop()
            last_eval = budget.eval_index(step)
            row = _measure(comm, clock, loss_sum, loss_count, rnd, step, budget, lr)
            loss_sum.zero_()
            loss_count = 0
            with comm.uncounted():
                protocol.gather_for_eval()
            if record is not None:
                row["test_loss"], row["test_acc"] = evaluate(protocol.eval_model(), test)
                best_acc = max(best_acc, row["test_acc"])
                record.append_metrics(row)
                rows += 1
                if progress is not None:
                    progress.set_postfix(
                        acc=f"{row['test_acc']:.3f}", loss=f"{row['train_loss']:.3f}"
                    )
            final = row
            comm.barrier()
            if not math.isfinite(row["train_loss"]):
                status = "diverged"
                break
            if checkpoints is not None and step < budget.steps:
                save(step)
            clock.start()
        if (
            stop is not None
            and step < budget.steps
            and comm.reduce_stats([float(stop())], op="max")[0] > 0
        ):
            clock.stop()
            if checkpoints is not None:
                save(step)
            raise Preempted(f"stopped at step {step} of {budget.steps} on request")
    clock.stop()
    if progress is not None:
        progress.close()
    stats = protocol.stats()
    names = sorted(stats)
    values = comm.reduce_stats([stats[n] for n in names], op="max") if names else []
    summary = {
        "status": status,
        "protocol": cfg.protocol_name,
        "workers": cfg.workers,
        "seed": cfg.seed,
        "data": cfg.data.name,
        "final_test_acc": final.get("test_acc"),
        "best_test_acc": best_acc if best_acc >= 0 else None,
        "final_test_loss": final.get("test_loss"),
        "train_s": final.get("train_s"),
        "compute_s": final.get("compute_s"),
        "comm_s": final.get("comm_s"),
        "bytes": final.get("bytes"),
        "bytes_moved": final.get("bytes_moved"),
        "bytes_payload": final.get("bytes_payload"),
        "steps": step,
        "rounds": rnd,
        "data_epochs": budget.epoch(step),
        "protocol_stats": dict(zip(names, values, strict=True)),
        "started_unix": started,
    }
    if record is not None:
        record.write_summary(summary)
        if checkpoints is not None:
            checkpoints.remove()  # a finished run keeps its results, not its state
    return TrainResult(summary, protocol.eval_model())


def _load_checkpoint(checkpoints: Checkpoints, comm: Comm) -> dict[str, Any] | None:
    """The newest checkpoint set that every rank can read, or None to start afresh.

    A set that fails to load on any rank (truncated, garbled) is skipped for the one
    before it, on all ranks alike; if none is readable the run stops with the reason.
    """
    candidates = checkpoints.candidates()
    if not candidates:
        return None
    errors = []
    for at in candidates:
        try:
            state: dict[str, Any] | None = checkpoints.load(at)
        except RuntimeError as err:
            state = None
            errors.append(str(err))
        if comm.reduce_stats([0.0 if state is not None else 1.0], op="max")[0] == 0:
            if errors:
                print(f"[resume] rank {comm.rank}: {'; '.join(errors)}; using step {at}")
            return state
    raise RuntimeError(
        f"no readable checkpoint set among steps {candidates}"
        + (f": {'; '.join(errors)}" if errors else " (unreadable on another rank)")
    )


def _measure(
    comm: Comm,
    clock: Clock,
    loss_sum: torch.Tensor,
    loss_count: int,
    rnd: int,
    step: int,
    budget: Budget,
    lr: float,
) -> dict[str, Any]:
    """One metrics row, reduced over ranks (measurement collectives are not counted)."""
    (train_s,) = comm.reduce_stats([clock.total], op="max")
    rank_s, comm_s, nbytes, moved, payload, losses, count = comm.reduce_stats(
        [
            clock.total,
            comm.seconds,
            comm.bytes_paper,
            comm.bytes_moved,
            comm.bytes_payload,
            float(loss_sum),
            loss_count,
        ]
    )
    world = comm.world_size
    return {
        "round": rnd,
        "step": step,
        "epoch": budget.epoch(step),
        "train_s": train_s,
        "compute_s": max(0.0, (rank_s - comm_s) / world),
        "comm_s": comm_s / world,
        "bytes": int(nbytes),
        "bytes_moved": int(moved),
        "bytes_payload": int(payload),
        "lr": lr,
        "train_loss": losses / max(count, 1),
    }


def _progress(total: int, cfg: RunConfig, is_rank0: bool) -> Any:
    if not (is_rank0 and cfg.launcher.progress and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{cfg.protocol_name} w{cfg.workers}", unit="step", leave=False)
