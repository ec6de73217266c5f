"""Sweeps through a real SLURM (sbatch, one task per worker) with Hydra's submitit launcher.

Needs a running SLURM with accounting (``bash .ci/slurm-up`` as root starts one on this
machine); skipped with the reason otherwise, except where COMMBENCH_REQUIRE_SLURM=1 (CI),
where a missing SLURM is a failure. Every job a test submits is cancelled at its end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from suite.record import RunDir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]  # the slow tier: CI runs it on a real SLURM
TIMING = {"train_s", "compute_s", "comm_s"}
# Long enough to be interrupted mid-run, short enough for CI (ResNet-101 x1/8 on digits).
RUN = ["train.deterministic=true", "train.data_epochs=10", "train.eval_every=0.5"]


def _slurm_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "SLURM is not installed (sbatch not on PATH); `bash .ci/slurm-up` as root"
    try:
        nodes = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10
        ).stdout
        subprocess.run(["sacct", "-n", "-X", "-S", "now"], check=True, capture_output=True)
    except (subprocess.SubprocessError, OSError) as err:
        return f"SLURM is not running or has no accounting ({err}); `bash .ci/slurm-up`"
    if not re.search(r"idle|mixed|allocated", nodes):
        return f"no usable SLURM node (sinfo: {nodes.strip() or 'nothing'})"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = _slurm_problem()
    if problem:
        if os.environ.get("COMMBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(f"COMMBENCH_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)


class Sweep:
    """``python -m suite.run -m hydra/launcher=slurm ...`` running in the background."""

    def __init__(self, folder: Path, *overrides: str) -> None:
        self.results = folder / "results"
        self.log = folder / "sweep.log"
        folder.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        cmd = [sys.executable, "-m", "suite.run", "-m", "hydra/launcher=slurm"]
        cmd += [*overrides, f"results_dir={self.results}"]
        if not any(o.startswith("hydra.launcher.timeout_min=") for o in overrides):
            cmd.append("hydra.launcher.timeout_min=20")
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=folder)

    def text(self) -> str:
        return self.log.read_text()

    def jobs(self) -> list[str]:
        return re.findall(r"^\[submitted\] #\d+ .* -> job (\S+)$", self.text(), re.M)

    def wait(self, timeout: float = 240, status: int = 0) -> str:
        """The sweep's output once it has ended with exit ``status`` (1: a run failed)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            pytest.fail(f"the sweep did not end within {timeout} s:\n{self.text()}")
        assert code == status, self.text()
        return self.text()

    def cancel(self) -> None:
        """Clean up after a test that stopped early: its sweep and its jobs."""
        if self.proc.poll() is None:
            for job in self.jobs():
                subprocess.run(["scancel", job.split("_")[0]], capture_output=True)
            self.proc.kill()
            self.proc.wait()

    def run(self, pattern: str) -> RunDir:
        (path,) = self.results.glob(pattern)
        return RunDir(path)

    def summary(self) -> dict:
        (path,) = self.results.glob("_hydra/*/sweep_summary.json")
        return json.loads(path.read_text())


def _until(condition, timeout: float, what: str, sweep: Sweep) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or sweep.proc.poll() is not None:
            pytest.fail(f"{what} did not happen:\n{sweep.text()}")
        time.sleep(0.2)


def _rows(run: RunDir) -> list[dict]:
    try:
        return run.read_metrics()
    except (OSError, ValueError):
        return []


def _assert_same_metrics(got: RunDir, want: RunDir, rows: int) -> None:
    """Row for row the same metrics, timings aside."""
    a, b = got.read_metrics(), want.read_metrics()
    assert len(a) == len(b) == rows
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if k not in TIMING} == {
            k: v for k, v in y.items() if k not in TIMING
        }


def _evaluated(sweep: Sweep, jobs: int, run: str, evaluations: int, timeout: float) -> None:
    """Wait until the sweep has submitted ``jobs`` jobs and the run folder matching
    ``run`` has ``evaluations`` rows."""
    _until(lambda: len(sweep.jobs()) == jobs, 120, "submission", sweep)
    _until(
        lambda: any(len(_rows(RunDir(p))) >= evaluations for p in sweep.results.glob(run)),
        timeout,
        f"{evaluations} evaluation(s) of {run}",
        sweep,
    )


def _preempt(sweep: Sweep, evaluations: int, timeout: float) -> str:
    """Once its run has ``evaluations`` rows, do to the sweep's one job what SLURM does
    to a preempted job with preempt_send_user_signal (and what submitit's own _interrupt
    does): SIGTERM, then the user signal, to every task. Returns the job."""
    _evaluated(sweep, 1, "digits-*", evaluations, timeout)
    job = sweep.jobs()[0]
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    return job


def _sacct(job: str, fields: str, *flags: str) -> list[list[str]]:
    """Accounting rows of a job (and its steps), as lists of the asked fields, once the
    job has left the queue (its result can be read before its tasks have exited)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
        if not state.stdout.strip():
            break
        time.sleep(0.2)
    out = subprocess.run(
        ["sacct", "-n", "-P", "-j", job, f"--format={fields}", *flags],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("|") for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def two_point_sweep(slurm, tmp_path_factory):
    """ddp and localsgd, 2 workers each: two SLURM jobs of two tasks."""
    sweep = Sweep(tmp_path_factory.mktemp("sweep"), "protocol=ddp,localsgd", "workers=2", *RUN)
    try:
        sweep.wait()
    finally:
        sweep.cancel()
    return sweep


def test_a_sweep_runs_one_job_per_point_with_one_task_per_worker(two_point_sweep):
    sweep = two_point_sweep
    jobs = sweep.jobs()
    assert len(jobs) == 2
    for protocol, job in zip(("ddp", "localsgd"), jobs, strict=True):
        run = sweep.run(f"digits-*-{protocol}-w2-s0-*")
        summary = run.read_summary()
        assert summary["status"] == "completed" and summary["workers"] == 2
        assert 0.5 < summary["final_test_acc"] <= 1
        assert len(run.read_metrics()) == 20
        assert json.loads(run.env.read_text())["world_size"] == 2
        # The job's step ran two tasks (one per worker) and completed.
        steps = {row[0]: row[1:] for row in _sacct(job, "JobID,NTasks,State")}
        assert steps[f"{job}.0"] == ["2", "COMPLETED"], steps
        assert summary["started_unix"] > sweep.started
    assert sweep.summary()["counts"] == {
        "completed": 2,
        "failed": 0,
        "diverged": 0,
        "skipped": 0,
        "busy": 0,
        "stopped": 0,
        "other": 0,
    }


def test_a_resubmitted_sweep_skips_completed_runs_without_jobs(two_point_sweep, tmp_path):
    cmd = [sys.executable, "-m", "suite.run", "-m", "hydra/launcher=slurm"]
    cmd += ["protocol=ddp,localsgd", "workers=2", *RUN, f"results_dir={two_point_sweep.results}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("[skip]") == 2 and "[submitted]" not in out.stdout
    assert "2 skipped" in out.stdout


def _task_pid(job: str, rank: int) -> int:
    """The process of one task (rank) of a running SLURM job (read from /proc; root)."""
    array_job, _, index = job.partition("_")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(
                item.split("=", 1)
                for item in (entry / "environ").read_text().split("\0")
                if "=" in item
            )
            cmd = (entry / "cmdline").read_text()
        except OSError:
            continue
        ids = (env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID"))
        this = ids == (array_job, index) if index else env.get("SLURM_JOB_ID") == array_job
        if this and env.get("SLURM_PROCID") == str(rank) and "submitit" in cmd:
            return int(entry.name)
    raise LookupError(f"no task {rank} of job {job} is running")


def test_a_killed_worker_fails_its_run_and_the_sweep_goes_on(slurm, tmp_path):
    sweep = Sweep(tmp_path, "protocol=ddp", "workers=2", "seed=0,1", *RUN)
    try:
        _evaluated(sweep, 2, "digits-*-ddp-w2-s0-*", 1, 120)
        os.kill(_task_pid(sweep.jobs()[0], 1), signal.SIGKILL)
        killed = time.monotonic()
        failed = sweep.run("digits-*-ddp-w2-s0-*")
        _until(lambda: (failed.read_summary() or {}).get("status") == "failed", 60, "fail", sweep)
        detected = time.monotonic() - killed
        text = sweep.wait(status=1)  # a failed run: the sweep goes on, then exits 1
    finally:
        sweep.cancel()
    print(f"run marked failed {detected:.1f} s after the kill -9")
    assert detected < 30
    summary = failed.read_summary()
    assert summary["error"].startswith("rank 1 ended without an error report"), summary
    assert (failed.path / "error-rank0.txt").exists()  # the survivor's view, kept
    assert sweep.run("digits-*-ddp-w2-s1-*").read_summary()["status"] == "completed"
    assert sweep.summary()["counts"]["failed"] == 1
    assert sweep.summary()["counts"]["completed"] == 1
    assert "1 completed, 1 failed" in text
    assert _sacct(sweep.jobs()[0], "State", "-X") == [["FAILED"]]


def test_a_preempted_job_is_requeued_and_resumes_to_the_same_metrics(two_point_sweep, tmp_path):
    sweep = Sweep(tmp_path, "protocol=localsgd", "workers=2", *RUN)
    try:
        job = _preempt(sweep, 3, 120)
        text = sweep.wait(300)
    finally:
        sweep.cancel()
    assert ["REQUEUED"] in _sacct(job, "State", "-X", "-D")  # every attempt, not the last
    logs = "".join(p.read_text() for p in sweep.results.rglob("*_log.out"))
    assert "[resume]" in logs
    print(re.search(r"\[preempted\].*", logs)[0])
    assert "1 completed" in text

    got = sweep.run("digits-*-localsgd-w2-s0-*")
    want = two_point_sweep.run("digits-*-localsgd-w2-s0-*")
    assert got.path.name == want.path.name  # the same configuration
    _assert_same_metrics(got, want, 20)
    a, b = got.read_summary(), want.read_summary()
    for key in ("final_test_acc", "bytes", "bytes_moved", "steps", "rounds"):
        assert a[key] == b[key], key


# -- Several nodes: `SLURM_NODES=2 bash .ci/slurm-up` (each slurmd in its own namespace) --


def _nodes() -> list[str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True)
    return sorted(set(out.stdout.split()))


@pytest.fixture(scope="module")
def two_nodes(slurm):
    nodes = _nodes()
    if len(nodes) < 2:
        reason = f"a one-node SLURM ({nodes}); `SLURM_NODES=2 bash .ci/slurm-up` makes two"
        if os.environ.get("COMMBENCH_REQUIRE_SLURM_NODES") == "2":
            pytest.fail(f"COMMBENCH_REQUIRE_SLURM_NODES=2 but {reason}")
        pytest.skip(reason)
    return nodes


def _placement(sweep: Sweep, job: str) -> dict[int, str]:
    """Rank → host of a job's tasks, from submitit's own log of each task."""
    found = {}
    for log in sweep.results.rglob(f"{job}_*_log.out"):
        m = re.search(r"hostname=(\S+?),.*global_rank=(\d+)", log.read_text())
        if m:
            found[int(m.group(2))] = m.group(1)
    return found


MULTI = ["workers=4", "hydra.launcher.max_tasks_per_node=2", "train.data_epochs=3", "seed=0"]


@pytest.fixture(scope="module")
def across_nodes(two_nodes, tmp_path_factory):
    """ddp and resist at 4 workers, 2 tasks on each of 2 nodes; and the same runs by the
    suite's own launcher on one machine, for comparison."""
    folder = tmp_path_factory.mktemp("nodes")
    sweep = Sweep(folder, "protocol=ddp,resist", *MULTI, *RUN[:1], "train.eval_every=1")
    try:
        sweep.wait(400)
    finally:
        sweep.cancel()
    local = folder / "local"
    cmd = [sys.executable, "-m", "suite.run", "-m", "protocol=ddp,resist", "workers=4"]
    cmd += ["train.data_epochs=3", "train.eval_every=1", *RUN[:1], "launcher.threads=1"]
    out = subprocess.run([*cmd, f"results_dir={local}"], capture_output=True, text=True, cwd=folder)
    assert out.returncode == 0, out.stdout + out.stderr
    return sweep, local


def test_a_four_worker_job_runs_two_tasks_on_each_of_two_nodes(across_nodes):
    sweep, _ = across_nodes
    jobs = sweep.jobs()
    assert len(jobs) == 2
    for job in jobs:
        placement = _placement(sweep, job)
        print(f"job {job}: rank -> node {placement}")
        assert sorted(placement) == [0, 1, 2, 3]
        by_node: dict[str, list[int]] = {}
        for rank, node in placement.items():
            by_node.setdefault(node, []).append(rank)
        assert sorted(len(r) for r in by_node.values()) == [2, 2], placement  # 2 per node
        steps = {row[0]: row[1:] for row in _sacct(job, "JobID,NNodes,NTasks,NodeList,State")}
        print(f"sacct {job}: {steps}")
        assert steps[f"{job}.0"][:2] == ["2", "4"] and steps[f"{job}.0"][3] == "COMPLETED"


def test_runs_across_nodes_equal_the_same_runs_on_one_machine(across_nodes):
    sweep, local = across_nodes
    for protocol in ("ddp", "resist"):
        got = sweep.run(f"digits-*-{protocol}-w4-s0-*")
        (want_path,) = local.glob(f"digits-*-{protocol}-w4-s0-*")
        assert got.path.name == want_path.name  # the same configuration
        _assert_same_metrics(got, RunDir(want_path), 3)


def test_kill_minus_nine_on_the_second_node_fails_that_run_naming_the_rank(two_nodes, tmp_path):
    sweep = Sweep(
        tmp_path, "protocol=ddp", *MULTI[:2], "train.data_epochs=10", "seed=0,1", *RUN[:1]
    )
    try:
        victim = "digits-*-ddp-w4-s0-*"
        _evaluated(sweep, 2, victim, 1, 180)
        job = sweep.jobs()[0]
        placement = _placement(sweep, job)
        second = sorted(set(placement.values()))[1]
        rank = max(r for r, node in placement.items() if node == second)
        os.kill(_task_pid(job, rank), signal.SIGKILL)
        failed = sweep.run(victim)
        _until(lambda: (failed.read_summary() or {}).get("status") == "failed", 60, "fail", sweep)
        text = sweep.wait(400, status=1)
    finally:
        sweep.cancel()
    error = failed.read_summary()["error"]
    print(f"killed rank {rank} on {second}: {error}")
    assert error.startswith(f"rank {rank} ended without an error report"), error
    assert sweep.run("digits-*-ddp-w4-s1-*").read_summary()["status"] == "completed"
    assert "1 completed, 1 failed" in text


def test_preemption_across_two_nodes_resumes_to_the_same_metrics(across_nodes, tmp_path):
    reference, _ = across_nodes
    sweep = Sweep(
        tmp_path,
        "protocol=resist",
        *MULTI,
        *RUN[:1],
        "train.eval_every=1",
        "train.checkpoint_every=0.5",
    )
    try:
        job = _preempt(sweep, 1, 240)
        text = sweep.wait(400)
    finally:
        sweep.cancel()
    assert ["REQUEUED"] in _sacct(job, "State", "-X", "-D")
    assert "1 completed" in text
    got = sweep.run("digits-*-resist-w4-s0-*")
    _assert_same_metrics(got, reference.run("digits-*-resist-w4-s0-*"), 3)


@pytest.mark.slow  # about 4 minutes: a 2-minute limit expires twice; CI runs it explicitly
def test_a_real_time_limit_requeues_and_the_run_ends_as_if_uninterrupted(two_point_sweep, tmp_path):
    """SLURM itself signals the job (USR2, signal_delay_s before a 2-minute limit); the run
    checkpoints, submitit requeues it (a timeout, up to max_num_timeout), and the final
    metrics equal the uninterrupted run's. Prints the time lost per requeue."""
    sweep = Sweep(
        tmp_path,
        "protocol=localsgd",
        "workers=2",
        *RUN[:1],
        # slurmctld signals 60 s before the 2-minute limit, at its next 30 s check, so an
        # attempt trains about 35-80 s before it stops (on 2 busy cores 36-43 s, 880
        # steps: 240 data-epochs once needed 7 attempts, and 120 ended the third just as
        # its signal came). 100 (2246 steps): the third attempt ends well before it.
        "train.data_epochs=100",
        "train.eval_every=50",
        "hydra.launcher.timeout_min=2",
        "hydra.launcher.signal_delay_s=60",
        "hydra.launcher.max_num_timeout=5",
    )
    try:
        text = sweep.wait(1200)
    finally:
        sweep.cancel()
    (job,) = sweep.jobs()
    states = _sacct(job, "State,Elapsed", "-X", "-D")
    print(f"job {job} attempts: {states}")
    assert any(s[0] == "REQUEUED" for s in states), states
    logs = "".join(p.read_text() for p in sorted(sweep.results.rglob("*_log.out")))
    stops = re.findall(r"^\[(\S+ \S+)\]\[suite\]\[INFO\] - \[preempted\]", logs, re.M)
    resumes = re.findall(r"^\[(\S+ \S+)\]\[suite\]\[INFO\] - .* resuming at step", logs, re.M)
    assert stops and resumes, logs[-3000:]
    assert "1 completed" in text

    import datetime as dt

    def at(stamp: str) -> float:
        return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    lost = [at(b) - at(a) for a, b in zip(stops, resumes, strict=False)]
    print(f"time from the checkpoint at the signal to training again, per requeue: {lost} s")
    assert all(0 < x < 120 for x in lost)
    ref = subprocess.run(
        [
            sys.executable,
            "-m",
            "suite.run",
            "protocol=localsgd",
            "workers=2",
            *RUN[:1],
            "train.data_epochs=100",  # the same run, never stopped
            "train.eval_every=50",
            "launcher.threads=1",
            f"results_dir={tmp_path / 'whole'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert ref.returncode == 0, ref.stdout + ref.stderr
    got = sweep.run("digits-*-localsgd-w2-s0-*")
    (want,) = (tmp_path / "whole").glob("digits-*")
    _assert_same_metrics(got, RunDir(want), 2)
