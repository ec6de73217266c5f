"""Running it for real: exit statuses, logs, run locks, concurrent sweeps, full disks,
unwritable folders, checkpoint cadence and torchrun, from the command line as a user."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = [
    "model.depth=18",
    "model.width=0.0625",
    "train.data_epochs=0.5",
    "train.eval_every=0.25",
    "data.batch_size=16",
    "launcher.threads=1",
]
TESTS = Path(__file__).parent


def faulty_plugin(root: Path) -> dict[str, str]:
    """An installed plugin as pip would leave it: tests/faulty.py behind an entry point
    of the commbench.protocols group (a dist-info folder on the path)."""
    info = root / "commbench_faulty-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: commbench-faulty\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[commbench.protocols]\nfaulty = faulty\n")
    path = os.pathsep.join([str(root), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def cli(*args, cwd, env=None, timeout=300, module="suite.run"):
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_a_failed_run_exits_1_a_diverged_one_0_a_refused_one_2(tmp_path):
    env = faulty_plugin(tmp_path / "site")
    results = f"results_dir={tmp_path / 'r'}"
    code, out = cli(
        "protocol=faulty", "protocol.fail_round=2", *TINY, results, cwd=tmp_path, env=env
    )
    assert code == 1, out
    assert "[failed]" in out and "injected failure on rank 1 in round 2" in out
    code, out = cli(
        *TINY, "optim.lr=1e12", "optim.schedule=constant", results, cwd=tmp_path, env=env
    )
    assert code == 0 and "[diverged]" in out, out
    code, out = cli("protocol=single", "workers=2", *TINY, results, cwd=tmp_path, env=env)
    assert code == 2 and "exactly one worker" in out, out


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_a_multirun_finishes_every_point_then_exits_1_if_one_failed(tmp_path):
    env = faulty_plugin(tmp_path / "site")
    code, out = cli(
        "-m",
        "protocol=faulty",
        "protocol.fail_round=2,1000",  # the second point never reaches its round
        *TINY,
        f"results_dir={tmp_path / 'r'}",
        cwd=tmp_path,
        env=env,
    )
    assert code == 1, out
    assert "1 completed, 1 failed" in out and "1 of 2 runs did not complete" in out
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "r").glob("*/summary.json")]
    assert sorted(s["status"] for s in summaries) == ["completed", "failed"]


def test_a_bad_point_stops_a_local_sweep_before_any_run(tmp_path):
    code, out = cli(
        "-m", "protocol=ddp,single", "workers=2", *TINY, f"results_dir={tmp_path}", cwd=tmp_path
    )
    assert code == 2 and "exactly one worker" in out, out
    assert not list(tmp_path.glob("digits-*"))  # the good point did not run either


def test_progress_lines_reach_the_console_the_run_folder_and_hydras_log(tmp_path):
    code, out = cli(*TINY, f"results_dir={tmp_path}", cwd=tmp_path)
    assert code == 0, out
    lines = [line for line in out.splitlines() if "| test acc" in line]
    assert len(lines) == 2, out  # one per evaluation
    assert all(" ETA " in line and " GB " in line and "epoch " in line for line in lines)
    (run,) = tmp_path.glob("digits-*")
    assert sum("| test acc" in line for line in (run / "run.log").read_text().splitlines()) == 2
    (job_log,) = tmp_path.glob("_hydra/*/run.log")
    assert sum("| test acc" in line for line in job_log.read_text().splitlines()) == 2


def test_an_unwritable_results_folder_is_one_line_before_anything(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out = cli(*TINY, f"results_dir={blocker / 'results'}", cwd=tmp_path)
    assert code == 2, out
    assert out.strip().splitlines() == [
        f"error: results_dir={blocker / 'results'} cannot be written (Not a directory); "
        "choose a writable folder, e.g. results_dir=$HOME/results"
    ]


def _start(args, cwd, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "suite.run", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_two_sweeps_at_once_do_not_collide(tmp_path):
    """Started together on one machine: ports, Hydra folders and run folders apart."""
    common = [*TINY, f"results_dir={tmp_path}"]
    procs = [_start(["-m", f"seed={s}", *common], tmp_path) for s in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(list(tmp_path.glob("digits-*/summary.json"))) == 2
    assert len(list(tmp_path.glob("_hydra/*/sweep_summary.json"))) == 2


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_the_same_run_started_twice_at_once_is_refused_naming_the_first(tmp_path):
    # Long enough (about 30 s) that the first run is still training when the second
    # command, which takes seconds to start, looks: a 3-data-epoch run could end first.
    common = [*TINY, "train.data_epochs=20", f"results_dir={tmp_path}"]
    first = _start(common, tmp_path)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".locks/*.lock")) or not list(tmp_path.glob("digits-*")):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.1)
    code, out = cli(*common, cwd=tmp_path)
    assert code == 2, out
    assert "is already running (pid" in out and f"pid {first.pid} on" in out, out
    first.communicate(timeout=300)
    assert first.returncode == 0
    code, out = cli(*common, cwd=tmp_path)  # now: already completed, skipped
    assert code == 0 and "[skip]" in out, out


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root")
def test_a_full_disk_ends_the_run_with_the_reason_and_a_later_run_completes(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        # The run folder fits; the first checkpoint (model and momentum) does not.
        args = [*TINY, "train.checkpoint_every=0.25", f"results_dir={disk}"]
        code, out = cli(*args, cwd=tmp_path)
        assert code == 1, out
        assert "No space left on device" in out, out
        leftovers = [p.name for p in disk.rglob("*tmp*")]
        assert not leftovers, leftovers  # no .summary.json.tmp*, no checkpoint/*.tmp*
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        code, out = cli(*args, cwd=tmp_path)
        assert code == 0 and "[completed]" in out, out
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_torchrun_runs_one_rank_per_process_as_the_suite_would(tmp_path):
    """Each torchrun process is one rank; rank 0 writes the one run folder; the metrics
    are those of the same run started by the suite (timings aside)."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    args = [*TINY, f"results_dir={tmp_path / 'torchrun'}"]
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "suite.run", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).count("[completed]") == 1
    (run,) = (tmp_path / "torchrun").glob("digits-*")
    assert json.loads((run / "summary.json").read_text())["workers"] == 2
    code, out = cli(*TINY, f"results_dir={tmp_path / 'suite'}", cwd=tmp_path)
    assert code == 0, out
    (ref,) = (tmp_path / "suite").glob("digits-*")
    timing = {"train_s", "compute_s", "comm_s"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows] == [
        {k: v for k, v in r.items() if k not in timing} for r in want
    ]
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "suite.run", *args, "workers=3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "workers=3 but 2 processes were started" in proc.stdout + proc.stderr


def test_suite_workers_ignore_an_inherited_local_rank(monkeypatch):
    """A LOCAL_RANK inherited from the shell must not put every local worker on one GPU:
    the suite's own workers take their rank as their local rank."""
    from suite import launch
    from suite.dist import Rendezvous

    seen = []
    monkeypatch.setattr(
        launch, "worker", lambda rdv, cfg, path, local_rank, **_: seen.append(local_rank)
    )
    monkeypatch.setenv("LOCAL_RANK", "0")
    for rank in range(3):
        launch.local_worker(Rendezvous(rank, 3), None, "unused")
    assert seen == [0, 1, 2]


def test_checkpoints_follow_their_own_cadence_and_a_resume_between_evaluations_is_exact(
    tmp_path,
):
    """train.checkpoint_every apart from evaluation: killed after a checkpoint that is no
    evaluation point, the same command resumes there and ends as if never stopped."""
    import dataclasses

    from helpers import tiny_config

    from suite.checkpoint import Checkpoints
    from suite.launch import execute
    from suite.record import RunDir
    from suite.testing import kill_rank_at_checkpoint

    cfg = tiny_config(
        "localsgd",
        2,
        results_dir=str(tmp_path / "killed"),
        train={"data_epochs": 2.0, "eval_every": 1.0, "checkpoint_every": 0.3},
        protocol_kw={"local_steps": 3},
    )
    result = kill_rank_at_checkpoint(cfg)
    step = Checkpoints(result["run_dir"], 0).latest_step()
    assert step is not None
    assert result["status"] == "failed"
    run = RunDir(result["run_dir"])
    assert len(run.read_metrics()) == 0  # the checkpoint came before the first evaluation
    assert step * 16 * 2 / 1437 < 1.0  # (data-epochs at that step)
    resumed = execute(cfg)
    reference = execute(dataclasses.replace(cfg, results_dir=str(tmp_path / "whole")))
    timing = {"train_s", "compute_s", "comm_s"}
    got, want = (
        RunDir(resumed["run_dir"]).read_metrics(),
        RunDir(reference["run_dir"]).read_metrics(),
    )
    assert len(got) == len(want) == 2
    assert [{k: v for k, v in r.items() if k not in timing} for r in got] == [
        {k: v for k, v in r.items() if k not in timing} for r in want
    ]
