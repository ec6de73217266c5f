"""End-to-end runs through the launcher: real worker processes, run folders, failures."""

import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import signal
import threading
import time

import faulty  # noqa: F401 - registers the test-only protocol
import pytest
import yaml
from helpers import run_ranks, tiny_config, train_checkpointed

import protocols
from suite.checkpoint import Checkpoints
from suite.config import ConfigError
from suite.launch import execute
from suite.record import METRIC_COLUMNS, RunDir
from suite.testing import kill_rank_at_checkpoint


def test_a_run_writes_a_complete_run_folder_and_is_skipped_on_rerun(tmp_path, capsys):
    cfg = tiny_config("localsgd", results_dir=str(tmp_path))
    summary = execute(cfg)
    run = RunDir(summary["run_dir"])
    assert run.path.parent == tmp_path and run.path.name == cfg.run_name()
    assert summary["status"] == "completed" and 0 <= summary["final_test_acc"] <= 1

    config = yaml.safe_load(run.config.read_text())
    assert config["protocol"] == {"name": "localsgd", "local_steps": 10, "optimizer_state": "keep"}
    assert config["workers"] == 2
    env = json.loads(run.env.read_text())
    assert env["world_size"] == 2 and env["versions"]["torch"] and env["cpu"]
    assert {"git_sha", "git_dirty", "gpus", "device"} <= env.keys()

    rows = run.read_metrics()
    assert len(rows) >= 2 and all(set(METRIC_COLUMNS) <= row.keys() for row in rows)
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    for a, b in itertools.pairwise(rows):
        assert b["bytes"] >= a["bytes"] and b["train_s"] >= a["train_s"]
    assert rows[-1]["bytes"] == summary["bytes"] > 0
    assert summary["peak_memory_bytes"] > 20 * 2**20  # a rank's resident set: torch alone is more
    assert (
        abs(rows[-1]["compute_s"] + rows[-1]["comm_s"] - rows[-1]["train_s"])
        < 0.5 * rows[-1]["train_s"]
    )
    assert "completed" in capsys.readouterr().out

    mtime = run.summary.stat().st_mtime
    again = execute(cfg)
    assert again["skipped"] and run.summary.stat().st_mtime == mtime
    forced = execute(dataclasses.replace(cfg, force=True))
    assert not forced.get("skipped") and forced["status"] == "completed"
    assert list(tmp_path.glob(f"{cfg.run_name()}.old-*"))  # the earlier attempt is kept


def test_a_worker_exception_fails_the_run_fast_with_its_error(tmp_path):
    cfg = tiny_config(
        "ddp", results_dir=str(tmp_path), train={"data_epochs": 20, "eval_every": 0.25}
    )
    cfg = dataclasses.replace(
        cfg, protocol=protocols.parse_config({"name": "faulty", "fail_round": 12})
    )
    start = time.perf_counter()
    summary = execute(cfg)
    assert time.perf_counter() - start < 60  # the full budget would take minutes
    assert summary["status"] == "failed"
    assert (
        "error-rank1" in summary["error"]
        and "injected failure on rank 1 in round 12" in summary["error"]
    )
    run = RunDir(summary["run_dir"])
    assert "RuntimeError: injected failure" in (run.path / "error-rank1.txt").read_text()
    rows = run.read_metrics()  # rows written before the crash are intact
    assert rows and all(r["step"] <= 12 for r in rows)


def test_kill_minus_nine_of_one_worker_ends_the_run_promptly(tmp_path):
    cfg = tiny_config(
        "ddp", results_dir=str(tmp_path), train={"data_epochs": 40, "eval_every": 0.25}
    )
    result = {}
    thread = threading.Thread(target=lambda: result.update(execute(cfg)))
    thread.start()
    metrics = tmp_path / cfg.run_name() / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert time.monotonic() < deadline, "the run never started training"
        time.sleep(0.1)
    victim = next(p for p in multiprocessing.active_children() if p.name == "rank1")
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    thread.join(60)
    assert not thread.is_alive()
    assert time.monotonic() - killed < 10
    assert result["status"] == "failed" and "rank 1 was killed by SIGKILL" in result["error"]
    assert all(
        not p.is_alive() for p in multiprocessing.active_children() if p.name.startswith("rank")
    )
    assert RunDir(result["run_dir"]).read_metrics()


def test_divergence_is_recorded_as_such(tmp_path):
    cfg = tiny_config("ddp", results_dir=str(tmp_path), optim={"lr": 1e12, "schedule": "constant"})
    summary = execute(cfg)
    assert summary["status"] == "diverged"
    rows = RunDir(summary["run_dir"]).read_metrics()
    assert rows[-1]["train_loss"] is None  # non-finite numbers are written as null


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"workers": 0}, "workers must be an integer in 1..1024"),
        ({"workers": 100}, "less than one batch; use fewer workers"),
        ({"data": {"name": "cifar10"}}, "set data.root"),
        ({"data": {"sharding": "random"}}, "choose one of ['disjoint', 'full']"),
        ({"optim": {"schedule": "linear"}}, "choose one of ['step', 'cosine', 'constant']"),
        ({"model": {"depth": 50}}, "valid: [18, 34, 101, 152, 200]"),
        ({"launcher": {"backend": "nccl"}}, "launcher.backend=nccl needs GPUs"),
        ({"launcher": {"backend": "mpi"}}, "choose one of ['auto', 'nccl', 'gloo']"),
    ],
)
def test_invalid_settings_are_refused_before_any_process_starts(tmp_path, overrides, message):
    before = multiprocessing.active_children()
    with pytest.raises((ConfigError, ValueError)) as err:  # a fixed value set: when built
        execute(tiny_config("ddp", results_dir=str(tmp_path), **overrides))
    assert message in str(err.value)
    assert multiprocessing.active_children() == before
    assert not any(tmp_path.iterdir())


TIMING = {"train_s", "compute_s", "comm_s"}


def test_a_stop_request_checkpoints_mid_interval_and_resumes_exactly(tmp_path):
    """The scheduler's signal reaches one rank; all stop at that round's end (between two
    evaluations), and training again from the checkpoint ends as if never stopped."""
    cfg = tiny_config("localsgd", 2, train={"data_epochs": 1.0}, protocol_kw={"local_steps": 3})
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    for folder in (stopped, whole):
        folder.mkdir()
    first = run_ranks(train_checkpointed, 2, tmp_path, cfg, str(stopped), 5)
    assert all("stopped at step 15 of" in r["preempted"] for r in first)
    assert Checkpoints(stopped, 0).latest_step() == 15  # not an evaluation step (12, 23)
    assert len(RunDir(stopped).read_metrics()) == 1

    resumed = run_ranks(train_checkpointed, 2, tmp_path, cfg, str(stopped))
    reference = run_ranks(train_checkpointed, 2, tmp_path, cfg, str(whole))
    got, want = RunDir(stopped).read_metrics(), RunDir(whole).read_metrics()
    assert len(got) == len(want) == 4
    for a, b in zip(got, want, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMING} == {
            k: v for k, v in b.items() if k not in TIMING
        }
    assert resumed[0]["summary"]["final_test_acc"] == reference[0]["summary"]["final_test_acc"]


def test_an_unreadable_checkpoint_falls_back_to_the_previous_set(tmp_path):
    """kill -9 after two checkpoint sets, garble the newest on one rank: the resumed run
    uses the set before it, on every rank, and still ends with the uninterrupted metrics."""
    cfg = tiny_config(
        "localsgd",
        2,
        results_dir=str(tmp_path / "killed"),
        train={"data_epochs": 2.0, "eval_every": 0.2, "checkpoint_every": 0.2},
        protocol_kw={"local_steps": 3},
    )
    kill_rank_at_checkpoint(cfg, nth=2)
    ckpt = Checkpoints(tmp_path / "killed" / cfg.run_name(), 1)
    newest, previous = ckpt.candidates()
    (ckpt.folder / f"rank1-step{newest}.pt").write_bytes(b"garbled")

    resumed = execute(cfg)
    assert resumed["status"] == "completed"
    reference = execute(dataclasses.replace(cfg, results_dir=str(tmp_path / "whole")))
    got = RunDir(resumed["run_dir"]).read_metrics()
    want = RunDir(reference["run_dir"]).read_metrics()
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in got] == [
        {k: v for k, v in r.items() if k not in TIMING} for r in want
    ]
    assert previous < newest


def test_a_slow_survivor_is_never_named_as_the_rank_that_died(tmp_path):
    """Under a scheduler each rank reports its own error; the lowest reporter names the
    rank that wrote none. On a busy node a survivor can report seconds after the first:
    it must be waited for, and the dead rank (here 3, which never reports) named."""
    from suite.dist import Rendezvous
    from suite.launch import _record_task_failure

    cfg = tiny_config("ddp", 4, results_dir=str(tmp_path))
    run = RunDir(tmp_path / cfg.run_name())
    run.path.mkdir()
    (run.path / "error-rank0.txt").write_text("RuntimeError: Connection reset by peer\n")

    def report_late(rank: int, after_s: float) -> None:
        time.sleep(after_s)
        (run.path / f"error-rank{rank}.txt").write_text("RuntimeError: Connection closed\n")

    late = [threading.Thread(target=report_late, args=a) for a in ((1, 1.5), (2, 2.5))]
    for t in late:
        t.start()
    _record_task_failure(cfg, run, Rendezvous(0, 4))
    for t in late:
        t.join()
    summary = run.read_summary()
    assert summary is not None and summary["status"] == "failed"
    assert summary["error"].startswith("rank 3 ended without an error report"), summary

    # Later than the wait: rank 0 has named rank 2 (no report yet); rank 2's report comes
    # after (it was blocked on rank 0), and rank 2 puts the blame where it belongs.
    (run.path / "error-rank2.txt").unlink()
    _record_task_failure(cfg, run, Rendezvous(0, 4), settle_s=0.2)
    assert run.read_summary()["error"].startswith("rank 2 ended without an error report")
    (run.path / "error-rank2.txt").write_text("RuntimeError: Connection closed\n")
    _record_task_failure(cfg, run, Rendezvous(2, 4), settle_s=0.2)
    assert run.read_summary()["error"].startswith("rank 3 ended without an error report")
    _record_task_failure(cfg, run, Rendezvous(1, 4), settle_s=0.2)  # not named: no change
    assert run.read_summary()["error"].startswith("rank 3 ended without an error report")


def test_a_diverged_run_is_a_result_and_skipped_unless_forced(tmp_path, capsys):
    from suite.launch import skip_completed

    cfg = tiny_config("ddp", results_dir=str(tmp_path))
    run = RunDir(tmp_path / cfg.run_name())
    run.path.mkdir()
    run.write_summary({"status": "diverged", "final_test_acc": 0.1})
    skipped = skip_completed(cfg)
    assert skipped is not None and skipped["skipped"] and skipped["status"] == "diverged"
    assert "already diverged" in capsys.readouterr().out
    assert skip_completed(dataclasses.replace(cfg, force=True)) is None
    run.write_summary({"status": "failed", "error": "boom"})
    assert skip_completed(cfg) is None  # a failed run is run again


@pytest.mark.parametrize(
    ("protocol", "overrides", "message"),
    [
        (
            "ddp",
            {"train": {"data_epochs": math.nan}},
            "train.data_epochs must be a finite number > 0, got nan",
        ),
        (
            "ddp",
            {"train": {"data_epochs": float("1e400")}},
            "train.data_epochs must be a finite number > 0, got inf",
        ),
        (
            "ddp",
            {"train": {"eval_every": math.nan}},
            "train.eval_every must be a finite number > 0, got nan",
        ),
        ("ddp", {"optim": {"lr": -1.0}}, "optim.lr must be a finite number >= 0, got -1.0"),
        ("ddp", {"optim": {"lr": math.inf}}, "optim.lr must be a finite number >= 0, got inf"),
        (
            "ddp",
            {"optim": {"momentum": -0.5}},
            "optim.momentum must be a finite number >= 0, got -0.5",
        ),
        (
            "ddp",
            {"launcher": {"timeout_s": 0.0}},
            "launcher.timeout_s must be a finite number > 0, got 0.0",
        ),
        (
            "ddp",
            {"launcher": {"threads": -2}},
            "launcher.threads must be >= 0 (0: the cores shared out), got -2",
        ),
        (
            "powersgd",
            {"protocol_kw": {"seed": -1}},
            "protocol.seed must be in 0..4294967295, got -1",
        ),
        (
            "ddp",
            {"workers": 1000, "data": {"sharding": "full"}},
            "workers=1000 would start 1000 worker processes on this machine",
        ),
    ],
)
def test_values_that_would_fail_inside_the_workers_are_refused_first(
    tmp_path, protocol, overrides, message
):
    before = multiprocessing.active_children()
    with pytest.raises(ConfigError) as err:
        execute(tiny_config(protocol, results_dir=str(tmp_path), **overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert multiprocessing.active_children() == before
    assert not any(tmp_path.iterdir())


def test_the_machine_limit_on_workers_is_stated_and_spares_real_uses(tmp_path, monkeypatch):
    from suite import launch

    monkeypatch.setattr(launch, "machine", lambda: (2, 4 * 2**30))  # 2 cores, 4 GiB
    cfg = tiny_config("ddp", results_dir=str(tmp_path), data={"sharding": "full"})
    launch.check_machine(dataclasses.replace(cfg, workers=8))  # what the tests run: fine
    with pytest.raises(ConfigError) as err:
        launch.check_machine(dataclasses.replace(cfg, workers=9))
    assert str(err.value) == (
        "workers=9 would start 9 worker processes on this machine (2 cores, 4.0 GiB of "
        "memory); at most 8 here: one per 0.5 GiB of memory and at most 64 per core; use "
        "fewer workers, or a cluster (hydra/launcher=slurm)"
    )


def test_a_results_dir_that_is_a_file_is_said_to_be_one(tmp_path):
    from suite.launch import check_writable

    path = tmp_path / "results"
    path.write_text("")
    with pytest.raises(ConfigError) as err:
        check_writable(path)
    assert str(err.value) == (
        f"results_dir={path} is a file, not a folder; choose a folder, e.g. "
        "results_dir=$HOME/results"
    )


def test_a_run_completed_while_waiting_for_its_lock_is_skipped_not_redone(tmp_path, monkeypatch):
    """Another launcher may complete the run between the first check and taking the
    lock: the check is made again under the lock, so its result is never moved aside."""
    import contextlib

    from suite import launch

    cfg = tiny_config("ddp", results_dir=str(tmp_path))
    real_lock = launch.run_lock

    @contextlib.contextmanager
    def lock_after_the_other_finished(c):
        run = RunDir(tmp_path / c.run_name())
        run.path.mkdir(exist_ok=True)
        run.write_summary({"status": "completed", "final_test_acc": 0.5})  # the other one
        with real_lock(c):
            yield

    monkeypatch.setattr(launch, "run_lock", lock_after_the_other_finished)
    before = multiprocessing.active_children()
    summary = execute(cfg)
    assert summary["skipped"] and summary["final_test_acc"] == 0.5
    assert multiprocessing.active_children() == before
    assert not list(tmp_path.glob("*.old-*"))  # the other launcher's result stays
