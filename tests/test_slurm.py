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

pytestmark = pytest.mark.slurm
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
        cmd += [*overrides, f"results_dir={self.results}", "hydra.launcher.timeout_min=20"]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=folder)

    def text(self) -> str:
        return self.log.read_text()

    def jobs(self) -> list[str]:
        return re.findall(r"^\[submitted\] #\d+ .* -> job (\S+)$", self.text(), re.M)

    def wait(self, timeout: float = 240) -> str:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            pytest.fail(f"the sweep did not end within {timeout} s:\n{self.text()}")
        assert code == 0, self.text()
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
        _until(lambda: len(sweep.jobs()) == 2, 120, "submission", sweep)
        victim = "digits-*-ddp-w2-s0-*"
        _until(
            lambda: any(_rows(RunDir(p)) for p in sweep.results.glob(victim)),
            120,
            "a first evaluation",
            sweep,
        )
        os.kill(_task_pid(sweep.jobs()[0], 1), signal.SIGKILL)
        killed = time.monotonic()
        failed = sweep.run("digits-*-ddp-w2-s0-*")
        _until(lambda: (failed.read_summary() or {}).get("status") == "failed", 60, "fail", sweep)
        detected = time.monotonic() - killed
        text = sweep.wait()
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
        _until(lambda: len(sweep.jobs()) == 1, 120, "submission", sweep)
        _until(
            lambda: any(len(_rows(RunDir(p))) >= 3 for p in sweep.results.glob("digits-*")),
            120,
            "3 evaluations",
            sweep,
        )
        job = sweep.jobs()[0]
        # What SLURM does to a preempted job with preempt_send_user_signal (and what
        # submitit's own _interrupt does): SIGTERM, then the user signal, to every task.
        subprocess.run(["scancel", "--signal=TERM", job], check=True)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
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
    got_rows, want_rows = got.read_metrics(), want.read_metrics()
    assert len(got_rows) == len(want_rows) == 20
    for a, b in zip(got_rows, want_rows, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMING} == {
            k: v for k, v in b.items() if k not in TIMING
        }
    a, b = got.read_summary(), want.read_summary()
    for key in ("final_test_acc", "bytes", "bytes_moved", "steps", "rounds"):
        assert a[key] == b[key], key
