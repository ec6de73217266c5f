"""Nothing silent, nothing lost: what each attempt ran with, signals, broken records."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers
import pytest
from helpers import tiny_config

from suite.checkpoint import Checkpoints
from suite.config import ConfigError
from suite.launch import execute
from suite.problem import parse_run_config
from suite.record import RunDir
from suite.sweep import compose
from suite.testing import kill_rank_at_checkpoint

#: The command-line form of a tiny run (as in test_cli).
TINY = [
    "model.depth=18",
    "model.width=0.0625",
    "train.data_epochs=0.3",
    "train.eval_every=0.15",
    "data.batch_size=16",
    "launcher.threads=1",
]


def run_cli(*args: str, cwd: Path) -> tuple[int, str]:
    return helpers.run_cli(*args, cwd=cwd, timeout=600)


def test_run_names_do_not_change():
    """Existing run folders must stay valid: the default config's name is fixed, and
    the launcher-only settings (threads, allow_changed_env) are not part of it."""
    name = "digits-preact_resnet101-ddp-w2-s0-f81ea0afa0"
    assert parse_run_config(compose(())).run_name() == name
    overrides = ("launcher.allow_changed_env=true", "launcher.threads=3")
    assert parse_run_config(compose(overrides)).run_name() == name
    assert tiny_config("ddp").run_name() == "digits-preact_resnet18-ddp-w2-s0-c01388ea38"


def _launcher(cfg, **changes):
    return dataclasses.replace(cfg, launcher=dataclasses.replace(cfg.launcher, **changes))


def test_a_resume_with_other_code_or_threads_is_refused_unless_allowed(tmp_path):
    """kill -9 after a checkpoint; a commit since (the first attempt's record names
    another) and another thread count: the resume is refused in one line naming both
    and nothing is started; allowed, it completes and its attempt record says so."""
    cfg = tiny_config(
        "ddp", results_dir=str(tmp_path), train={"eval_every": 0.2, "checkpoint_every": 0.2}
    )
    assert kill_rank_at_checkpoint(cfg)["status"] == "failed"
    run = RunDir(tmp_path / cfg.run_name())
    first_file = run.path / "attempts" / "1.json"
    first = json.loads(first_file.read_text())
    env = json.loads(run.env.read_text())
    assert first["git_sha"] == env["git_sha"] and first["threads_per_worker"] == 1
    assert first["versions"]["torch"] and first["hostname"] and first["started_at"]
    assert first["ended"]["status"] == "failed" and "rank 1" in first["ended"]["error"]
    sha = first["git_sha"]
    first["git_sha"] = "0123456789abcdef0123456789abcdef01234567"  # the code changed since
    first_file.write_text(json.dumps(first))

    changed = _launcher(cfg, threads=2)
    with pytest.raises(ConfigError) as refused:
        execute(changed)
    message = str(refused.value)
    assert "\n" not in message and "cannot resume" in message
    assert f"commit 0123456789ab -> {sha[:12]}" in message
    assert "threads per worker 1 -> 2" in message and "allow_changed_env=true" in message
    assert not (run.path / "attempts" / "2.json").exists()  # nothing was started

    summary = execute(_launcher(changed, allow_changed_env=True))
    assert summary["status"] == "completed" and summary["threads_per_worker"] == 2
    assert RunDir(summary["run_dir"]).read_summary()["threads_per_worker"] == 2
    second = json.loads((run.path / "attempts" / "2.json").read_text())
    assert second["resumed"] and second["threads_per_worker"] == 2
    assert any(c.startswith("commit ") for c in second["changed"])
    assert "threads per worker 1 -> 2" in second["changed"]
    assert second["ended"]["status"] == "completed"


def test_the_command_line_refuses_a_changed_resume_with_exit_status_2(tmp_path):
    """A resumable run folder whose first attempt ran other code and torch: exit 2 and
    one line naming each difference, before any worker starts."""
    cfg = parse_run_config(compose((*TINY, f"results_dir={tmp_path}")))
    run = RunDir(tmp_path / cfg.run_name())
    (run.path / "checkpoint").mkdir(parents=True)
    (run.path / "checkpoint" / "latest.json").write_text('{"step": 3, "previous": null}')
    first = {"git_sha": "f" * 40, "git_dirty": False, "python": "3.0.1"}
    first |= {"versions": {"torch": "0.4.0", "numpy": "1.0"}, "threads_per_worker": 1}
    (run.path / "attempts").mkdir()
    (run.path / "attempts" / "1.json").write_text(json.dumps(first))
    code, out = run_cli(*TINY, f"results_dir={tmp_path}", cwd=tmp_path)
    assert code == 2, out
    (line,) = [x for x in out.splitlines() if x.startswith("error:")]
    for part in ("commit ffffffffffff ->", "torch 0.4.0 ->", "numpy 1.0 ->", "python 3.0.1 ->"):
        assert part in line, line
    assert not (run.path / "attempts" / "2.json").exists() and not run.summary.exists()


LONG = [*TINY[:2], "train.data_epochs=3", "train.eval_every=0.25", "train.checkpoint_every=0.25"]
LONG += TINY[4:]


def _start_cli(tmp_path: Path, *args: str) -> subprocess.Popen:
    """``python -m suite.run`` in its own session (as ``timeout`` or a login shell starts
    it), with the signals at their defaults: a test run under ``nohup`` must not pass its
    ignored SIGHUP on (the launcher rightly keeps an ignored signal ignored)."""

    def defaults() -> None:
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)

    return subprocess.Popen(
        [sys.executable, "-m", "suite.run", *args, f"results_dir={tmp_path}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=defaults,
    )


def _wait_for_rows(tmp_path: Path, proc: subprocess.Popen, rows: int = 1) -> None:
    deadline = time.monotonic() + 300
    while sum(f.read_text().count("\n") for f in tmp_path.glob("*/metrics.jsonl")) < rows:
        assert time.monotonic() < deadline and proc.poll() is None, "training never started"
        time.sleep(0.1)


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
@pytest.mark.parametrize(
    ("sig", "group"), [(signal.SIGTERM, True), (signal.SIGHUP, False)], ids=["term", "hup"]
)
def test_sigterm_and_sighup_checkpoint_record_and_exit_128_plus_signum(tmp_path, sig, group):
    """``timeout`` signals the launcher's whole process group; a closed SSH session hangs
    up the launcher. Either way: a message, a checkpoint, a summary naming the signal,
    exit status 128 + signum; the same command then resumes and completes."""
    proc = _start_cli(tmp_path, *LONG)
    _wait_for_rows(tmp_path, proc)
    (os.killpg if group else os.kill)(proc.pid, sig)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, out
    assert f"[stop] {sig.name}" in out and "[stopped]" in out, out
    (run,) = [RunDir(p.parent) for p in tmp_path.glob("*/summary.json")]
    summary = run.read_summary()
    assert summary["status"] == "stopped" and summary["signal"] == sig.name, summary
    step = summary["checkpoint_step"]
    assert step and f"stopped by {sig.name}" in summary["error"]
    assert (run.path / "checkpoint" / "latest.json").exists()
    ended = json.loads((run.path / "attempts" / "1.json").read_text())["ended"]
    assert ended["status"] == "stopped" and ended["signal"] == sig.name
    if sig == signal.SIGTERM:
        code, out = run_cli(*LONG, f"results_dir={tmp_path}", cwd=tmp_path)
        assert code == 0 and "[resume]" in out and "[completed]" in out, out
        assert f"resuming at step {step}" in run.log_file.read_text()


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_a_signal_stops_the_whole_sweep_after_the_current_points_record(tmp_path, sig):
    """Ctrl-C (the terminal signals the launcher's process group) or SIGTERM during the
    first of two points: that point checkpoints and records ``stopped``, the second never
    runs, the sweep prints its summary and exits 128 + signum (a shell loop stops too)."""
    proc = _start_cli(tmp_path, "-m", "seed=0,1", *LONG)
    _wait_for_rows(tmp_path, proc)
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, out
    (run,) = [RunDir(p.parent) for p in tmp_path.glob("digits-*/summary.json")]
    assert run.read_summary()["status"] == "stopped" and run.read_summary()["seed"] == 0
    assert not list(tmp_path.glob("digits-*-s1-*")), "the second point ran"
    assert f"[stop] {sig.name}: the sweep stops after job #0; 1 point(s) not run" in out, out
    assert "1 stopped" in out and f"stopped by {sig.name}" in out, out
    (record,) = tmp_path.glob("_hydra/*/sweep_summary.json")
    assert json.loads(record.read_text())["stopped_by"] == sig.name


def test_an_unreadable_latest_json_resumes_from_the_newest_complete_set(tmp_path, capsys):
    """kill -9 after two checkpoint sets, garble ``checkpoint/latest.json``: the same
    command says so and resumes from the newer set, in place (nothing moved aside)."""
    cfg = tiny_config(
        "localsgd",
        results_dir=str(tmp_path),
        train={"data_epochs": 1.0, "eval_every": 0.2, "checkpoint_every": 0.2},
        protocol_kw={"local_steps": 3},
    )
    kill_rank_at_checkpoint(cfg, nth=2)
    run = RunDir(tmp_path / cfg.run_name())
    ckpt = Checkpoints(run.path, 0)
    newest, _ = ckpt.candidates()
    ckpt.latest_file.write_text('{"step": 1')  # truncated on disk
    capsys.readouterr()
    summary = execute(cfg)
    out = capsys.readouterr().out
    assert summary["status"] == "completed", summary
    assert "checkpoint/latest.json is unreadable" in out and f"step {newest}" in out, out
    assert f"resuming at step {newest}" in run.log_file.read_text()
    assert not list(tmp_path.glob("*.old-*")), "the run was moved aside and restarted"


def test_a_resume_removes_the_partial_files_of_a_cut_off_write(tmp_path, capsys):
    """A kill during a checkpoint (or summary) write leaves its temporary file: the next
    start of the run removes it, says so, and keeps the complete checkpoint set."""
    from suite.launch import prepare

    cfg = tiny_config(
        "ddp", results_dir=str(tmp_path), train={"eval_every": 0.2, "checkpoint_every": 0.2}
    )
    kill_rank_at_checkpoint(cfg)
    run = RunDir(tmp_path / cfg.run_name())
    ckpt = Checkpoints(run.path, 1)
    step = ckpt.latest_step()
    partial = ckpt.folder / f"rank1-step{step + 7}.tmp4242"  # as Checkpoints.save names it
    partial.write_bytes(b"PK\x03\x04 cut off")
    cut = run.path / ".summary.json.tmp4242"  # as atomic_write_text names it
    cut.write_text('{"status": "compl')
    capsys.readouterr()
    prepare(cfg, run)
    out = capsys.readouterr().out
    assert not partial.exists() and not cut.exists()
    assert "removed 2 partial file(s) of a write that was cut off" in out, out
    assert partial.name in out and ckpt.latest_step() == step
    assert (ckpt.folder / f"rank1-step{step}.pt").exists()


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_a_run_folder_that_turns_read_only_ends_the_run_with_the_workers_reason(tmp_path):
    """The run folder becomes unwritable mid-run (a read-only remount): the launcher ends
    the run in one line with the workers' own reason, no traceback, exit status 1."""
    results = tmp_path / "results"
    results.mkdir()
    proc = _start_cli(results, *LONG, "train.checkpoint_every=100")
    folder = None
    try:
        _wait_for_rows(results, proc)
        (folder,) = [p.parent for p in results.glob("digits-*/metrics.jsonl")]
        for cmd in (["--bind", folder, folder], ["-o", "remount,bind,ro", folder, folder]):
            if subprocess.run(["mount", *map(str, cmd)]).returncode:
                proc.kill()
                pytest.skip("cannot remount a folder read-only here")
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        if folder is not None:
            subprocess.run(["umount", str(folder)], capture_output=True)
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    (line,) = [x for x in out.splitlines() if x.startswith("[failed]")]
    assert "Read-only file system" in line and "rank " in line, line
    assert "summary.json could not be written" in line, line


def _stall_rank1(cfg, resume_after_s: float | None) -> tuple[dict, float]:
    """Run ``cfg``; SIGSTOP rank 1 once training has begun (SIGCONT after
    ``resume_after_s``). Its summary and the seconds from the stop to the run's end."""
    import multiprocessing
    import threading

    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(execute(cfg)))
    thread.start()
    victim = None
    try:
        heartbeat = Path(cfg.results_dir) / cfg.run_name() / "heartbeat" / "rank1"
        deadline = time.monotonic() + 300
        while not heartbeat.exists():
            assert time.monotonic() < deadline and thread.is_alive(), "training never started"
            time.sleep(0.05)
        victim = next(p for p in multiprocessing.active_children() if p.name == "rank1")
        os.kill(victim.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        if resume_after_s is not None:
            time.sleep(resume_after_s)
            os.kill(victim.pid, signal.SIGCONT)
        thread.join(300)
    finally:
        if victim is not None and victim.is_alive():
            os.kill(victim.pid, signal.SIGCONT)
    assert not thread.is_alive(), "the stalled run did not end"
    return result, time.monotonic() - stopped


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_a_stopped_rank_is_named_within_the_warning_time_and_fails_the_run(tmp_path, caplog):
    """SIGSTOP of rank 1: a warning names it after stall_warn_s, and the run ends failed
    after stall_timeout_s (not the 30 min collective timeout), naming it, flagged."""
    cfg = tiny_config("ddp", results_dir=str(tmp_path), train={"data_epochs": 20})
    cfg = _launcher(cfg, stall_warn_s=2.0, stall_timeout_s=8.0)
    summary, took = _stall_rank1(cfg, None)
    assert summary["status"] == "failed" and took < 60, (summary, took)
    assert summary["error"].startswith("rank 1 is stopped (SIGSTOP"), summary
    assert "launcher.stall_timeout_s=8" in summary["error"] and summary["stalled"]
    assert summary["timings_valid"] is False
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[stall]")]
    assert warned and "rank 1 is stopped" in warned[0], warned
    written = RunDir(summary["run_dir"]).read_summary()
    assert written["status"] == "failed" and written["stalled"]
    assert not (Path(summary["run_dir"]) / "heartbeat").exists()


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_a_run_that_stalled_and_went_on_is_not_a_clean_measurement(tmp_path, caplog):
    cfg = tiny_config("ddp", results_dir=str(tmp_path), train={"data_epochs": 5.0})
    cfg = _launcher(cfg, stall_warn_s=1.5, stall_timeout_s=60.0)
    summary, _ = _stall_rank1(cfg, 5.0)
    assert summary["status"] == "completed", summary
    written = RunDir(summary["run_dir"]).read_summary()
    assert written["timings_valid"] is False and written["stalled_s"] >= 1.5, written
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("[stall] no progress") and "rank 1" in m for m in messages)
    assert any(m.startswith("[stall] progress again") for m in messages), messages
