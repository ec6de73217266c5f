"""The contract kit: what every protocol, shipped or from a plugin, must pass.

Plain functions, importable by plugin authors (``from suite.testing import contract``)
and run by the suite's own tests over every registered protocol:

- :func:`check_refusals_are_one_line`: ``supports()`` refuses with one line, or accepts;
- :func:`check_learns_and_counts_bytes`: real 2- and 3-rank gloo runs through the
  launcher complete, learn on the embedded data (test accuracy at least twice chance),
  and record exactly ``rounds × paper_bytes_per_round`` bytes, where the recorded bytes
  are what ``Comm`` counted from the tensors the protocol handed to its collectives;
- :func:`check_resume_after_kill`: kill -9 of a worker after a checkpoint, then the same
  command again, ends with the uninterrupted run's metrics, row for row (timings aside);
- :func:`check_equivalences`: every degenerate case the protocol declares
  (``Protocol.equivalences``) holds on real ranks;
- :func:`check_replicas_agree`: after a 3-rank run, every rank holds what the protocol
  declares they share (``Protocol.agreed_state``: the whole model when
  ``replicas_agree_after_round``), bit for bit: replicas that drift apart, or an error
  feedback that leaves ranks with different steps, fail it.

Each runs a small problem chosen for the protocol: the first shared model it supports
(ResNet-34 at width 1/16, or a 2-layer MLP of width 48) on scikit-learn's digits, with
ℓ = 3 where it has local steps. A plugin's own test file can be as short as::

    import pytest
    from suite.testing import contract

    @pytest.mark.parametrize("check", contract("my_method"), ids=lambda c: c.__name__)
    def test_contract(check, tmp_path):
        check(tmp_path)
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

import protocols
from protocols.base import RoundsConfig
from suite.architectures import MLPConfig
from suite.config import ConfigError, RunConfig, with_part
from suite.dist import Comm
from suite.problem import check, load_problem, parse_run_config
from suite.record import RunDir, Summary

#: The shared models a protocol is tried on (its own family first), as overrides.
SHARED_MODELS: tuple[tuple[str, ...], ...] = (
    ("model=preact_resnet", "++model.depth=34", "++model.width=0.0625"),
    ("model=mlp", "++model.hidden=48", "++model.layers=2"),  # 48: splits over 2, 3, 4, 8
)
#: The small problem, as command-line overrides.
SMALL = (
    "data=digits",
    "data.batch_size=16",
    "train.data_epochs=2",
    "train.eval_every=0.5",
    "launcher.device=cpu",
    "launcher.threads=1",
    "launcher.progress=false",
    "launcher.timeout_s=120",
)
TIMING = {"train_s", "compute_s", "comm_s"}


def timing(key: str) -> bool:
    """A metrics key that measures time (differs between identical runs): the row's
    timings and any protocol statistic in seconds (``stats.<name>_s``)."""
    return key in TIMING or (key.startswith("stats.") and key.endswith("_s"))


class NotApplicable(Exception):
    """A check that does not apply to this protocol (``protocol=single`` has no second
    rank); the suite's tests skip it, saying why."""


CPU = torch.device("cpu")


def kit_config(name: str, workers: int = 2, **overrides: Any) -> RunConfig:
    """A small run of protocol ``name`` that it supports, composed as the command line
    would (``protocol=<name>`` with what it selects): the first shared model it accepts,
    digits, batch 16, ℓ = 3 (where it has local steps). ``overrides``: run fields
    (``protocol_kw`` for the protocol's knobs; dicts update sections)."""
    from suite.sweep import compose

    cls = protocols.get(name)
    knobs: dict[str, Any] = {"local_steps": 3} if issubclass(cls.Config, RoundsConfig) else {}
    knobs.update(overrides.pop("protocol_kw", {}))
    model_kw = overrides.pop("model", {})
    own = cls.selects.get("model")
    errors = []
    for model in sorted(SHARED_MODELS, key=lambda m: m[0] != f"model={own}"):
        values = compose((f"protocol={name}", f"workers={workers}", *model, *SMALL))
        values["protocol"].update(knobs)
        if model_kw.get("name", values["model"]["name"]) != values["model"]["name"]:
            values["model"] = {}  # another model: its own knobs only
        values["model"].update(model_kw)
        cfg = parse_run_config(values)
        for key, value in overrides.items():
            if isinstance(value, Mapping):
                cfg = with_part(cfg, key, value)
            else:
                cfg = dataclasses.replace(cfg, **{key: value})
        try:
            check(cfg)
        except ConfigError as err:
            errors.append(str(err))
            continue
        return cfg
    if errors and all(f"workers={workers}" in e for e in errors):
        raise NotApplicable(errors[0])
    raise AssertionError(f"{name} supports none of the shared models: {errors}")


def check_refusals_are_one_line(name: str) -> None:
    """``supports()`` on every shared model at 1..8 workers: None, or one line."""
    cls = protocols.get(name)
    for model in ("preact_resnet", "mlp"):
        cfg = kit_config("single", 1)
        if model == "mlp":
            cfg = dataclasses.replace(cfg, model=MLPConfig(hidden=48))
        info = load_problem(cfg, CPU).info
        for workers in range(1, 9):
            reason = cls.supports(cls.Config(), info, workers)
            if reason is not None:
                assert reason.strip() and "\n" not in reason, (name, workers, reason)


def check_learns_and_counts_bytes(name: str, tmp: Path, workers: int = 2) -> Summary:
    """A real run through the launcher: completes, learns, records the stated bytes."""
    from suite.launch import execute

    cfg = kit_config(name, workers, results_dir=str(tmp / f"learn-{name}-{workers}"))
    summary = execute(cfg)
    assert summary["status"] == "completed", summary
    classes = 10  # digits
    acc = summary["final_test_acc"]
    assert acc is not None and acc >= 2 / classes, (name, acc)
    cls = protocols.get(name)
    if cls.bytes_not_stated:
        return summary
    info = load_problem(cfg, CPU).info
    per_round = cls.paper_bytes_per_round(cfg.protocol, info, workers)
    assert summary["bytes"] == summary["rounds"] * per_round, (
        f"{name}: recorded {summary['bytes']} bytes in {summary['rounds']} rounds, "
        f"paper_bytes_per_round states {per_round}"
    )
    return summary


def kill_rank_at_checkpoint(cfg: RunConfig, nth: int = 1) -> dict[str, Any]:
    """Run ``cfg`` through the launcher and kill -9 its rank 1 right after the ``nth`` (1 or
    2) committed checkpoint; the killed run's summary. Rank 1 is asked to stand still there
    (``suite.train.HOLD_ENV``): a fast run would otherwise finish, and drop its
    checkpoints, between two looks."""
    from suite.checkpoint import Checkpoints
    from suite.launch import execute
    from suite.train import HOLD_ENV

    assert nth in (1, 2), "the pointer remembers two checkpoint sets"
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(execute(cfg)))
    checkpoints = Checkpoints(Path(cfg.results_dir) / cfg.run_name(), 0)
    os.environ[HOLD_ENV] = f"1:{nth}"
    try:
        thread.start()
        deadline = time.monotonic() + 120
        while len(checkpoints.candidates()) < nth:
            assert time.monotonic() < deadline and thread.is_alive(), "no checkpoint was written"
            time.sleep(0.02)
        victim = next(p for p in multiprocessing.active_children() if p.name == "rank1")
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        thread.join(60)
    finally:
        os.environ.pop(HOLD_ENV, None)
    assert not thread.is_alive(), "the killed run did not end"
    return result


def check_resume_after_kill(name: str, tmp: Path) -> None:
    """kill -9 a worker after a checkpoint; the same command again resumes there and ends
    with the uninterrupted run's metrics, row for row (timings aside)."""
    from suite.launch import execute

    # One data-epoch, a checkpoint at its middle: the kill lands halfway, ten rows to compare.
    train = {"data_epochs": 1.0, "eval_every": 0.1, "checkpoint_every": 0.5}
    cfg = kit_config(name, 2, results_dir=str(tmp / "killed"), train=train)
    result = kill_rank_at_checkpoint(cfg)
    assert result["status"] == "failed", result
    resumed = execute(cfg)  # the same command again
    assert resumed["status"] == "completed", resumed
    reference = execute(dataclasses.replace(cfg, results_dir=str(tmp / "whole")))
    got = RunDir(resumed["run_dir"]).read_metrics()
    want = RunDir(reference["run_dir"]).read_metrics()
    assert len(got) == len(want) >= 8
    for a, b in zip(got, want, strict=True):
        assert {k: v for k, v in a.items() if not timing(k)} == {
            k: v for k, v in b.items() if not timing(k)
        }, (name, a, b)
    for key in ("final_test_acc", "bytes", "bytes_moved", "steps", "rounds"):
        assert resumed[key] == reference[key], key


def train_rank(rank: int, comm: Comm, cfg: RunConfig) -> dict[str, Any]:
    """For ``run_ranks``: train ``cfg`` on this rank; its summary and final weights."""
    from suite.train import train

    result = train(cfg, comm, CPU)
    return {"summary": result.summary, "state": result.model.state_dict()}


def _trained(cfg: RunConfig, tmp: Path) -> dict[str, Any]:
    from suite.spawn import run_ranks

    if cfg.workers == 1:
        return train_rank(0, Comm(0, 1, CPU), cfg)
    return dict(run_ranks(train_rank, cfg.workers, tmp, cfg)[0])


def check_equivalences(name: str, tmp: Path) -> None:
    """Every degenerate case ``name`` declares, on real ranks: the same model (to the
    declared tolerance) and, where declared, the same bytes."""
    cls = protocols.get(name)
    for eq in cls.equivalences:
        short: dict[str, Any] = {"train": {"data_epochs": 0.3, "eval_every": 0.3}}
        for key, value in eq.run.items():  # sections merge: train={...} keeps the budget
            short[key] = {**short.get(key, {}), **value} if isinstance(value, Mapping) else value
        mine = kit_config(name, **{**short, "protocol_kw": dict(eq.mine)})
        theirs_run: dict[str, Any] = {
            **short,
            "model": dataclasses.asdict(mine.model),  # the same model and optimizer
            "optim": dataclasses.asdict(mine.optim),
            **eq.their_run,
        }
        theirs = kit_config(eq.other, **{**theirs_run, "protocol_kw": dict(eq.theirs)})
        a, b = _trained(mine, tmp), _trained(theirs, tmp)
        assert a["summary"]["steps"] == b["summary"]["steps"], (name, eq.claim)
        if eq.same_bytes:
            assert a["summary"]["bytes"] == b["summary"]["bytes"], (name, eq.claim)
        for key, value in b["state"].items():
            assert torch.allclose(a["state"][key], value, atol=eq.atol), (name, eq.claim, key)


def agreed_state_rank(rank: int, comm: Comm, cfg: RunConfig) -> dict[str, Any]:
    """For ``run_ranks``: train ``cfg`` on this rank; what its protocol declares every rank
    holds alike after a round (``Protocol.agreed_state``), as CPU copies."""
    from suite.train import train

    protocol = train(cfg, comm, CPU).protocol
    assert protocol is not None
    return {k: t.detach().cpu().clone() for k, t in protocol.agreed_state().items()}


def check_replicas_agree(name: str, tmp: Path, workers: int = 3) -> None:
    """After a short real run (which ends with a round's aggregation), every rank holds
    the same ``agreed_state`` as rank 0, bit for bit."""
    from suite.spawn import run_ranks

    cfg = kit_config(name, workers, train={"data_epochs": 0.3, "eval_every": 0.3})
    states = run_ranks(agreed_state_rank, workers, tmp, cfg)
    cls = protocols.get(name)
    if cls.replicas_agree_after_round:
        assert states[0], f"{name} declares replicas but agreed_state() names no tensor"
    for rank, state in enumerate(states[1:], 1):
        assert state.keys() == states[0].keys(), (name, rank)
        differ = [k for k, t in state.items() if not torch.equal(t, states[0][k])]
        assert not differ, (
            f"{name}: after the run rank {rank} holds other values than rank 0 in {differ}, "
            f"which the protocol declares every rank shares (replicas_agree_after_round="
            f"{cls.replicas_agree_after_round}, agreed_state)"
        )


def contract(name: str) -> list[Callable[[Path], None]]:
    """The checks of protocol ``name``, each a function of a temporary folder (pytest's
    ``tmp_path``), named ``<name>-<check>``."""

    def refusals(tmp: Path) -> None:
        check_refusals_are_one_line(name)

    def two_ranks(tmp: Path) -> None:
        check_learns_and_counts_bytes(name, tmp, 2)

    def three_ranks(tmp: Path) -> None:
        check_learns_and_counts_bytes(name, tmp, 3)

    def resume(tmp: Path) -> None:
        check_resume_after_kill(name, tmp)

    def equivalences(tmp: Path) -> None:
        check_equivalences(name, tmp)

    def replicas(tmp: Path) -> None:
        check_replicas_agree(name, tmp)

    checks: list[Callable[[Path], None]] = [
        refusals,
        two_ranks,
        three_ranks,
        resume,
        equivalences,
        replicas,
    ]
    for fn in checks:
        fn.__name__ = f"{name}-{fn.__name__}"
    return checks
