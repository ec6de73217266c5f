"""The SLURM launcher's parts that need no SLURM: job shapes and refusals before submission."""

import re
import subprocess
import sys

import pytest

from suite.cluster import Layout, layout, wait_for
from suite.config import ConfigError


@pytest.mark.parametrize(
    ("workers", "gpus", "max_tasks", "want"),
    [
        (2, 0, None, Layout(1, 2, 0)),  # CPU nodes: every task on one node
        (8, 0, 4, Layout(2, 4, 0)),
        (4, 8, None, Layout(1, 4, 4)),  # one GPU per task
        (8, 8, None, Layout(1, 8, 8)),
        (16, 8, None, Layout(2, 8, 8)),
        (12, 8, None, Layout(2, 6, 6)),
        (1, 4, None, Layout(1, 1, 1)),
    ],
)
def test_one_task_per_worker(workers, gpus, max_tasks, want):
    got = layout(workers, gpus, max_tasks)
    assert got == want
    assert got.nodes * got.tasks_per_node == workers
    assert not gpus or got.gpus_per_node == got.tasks_per_node <= gpus


def test_a_layout_that_does_not_split_evenly_is_refused():
    with pytest.raises(ConfigError, match="workers=9 cannot be split evenly over 2 nodes"):
        layout(9, 8, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["workers=2,0"], "workers must be an integer in 1..1024"),
        (["workers=2", "hydra.launcher.tasks_per_node=2"], "tasks_per_node is derived"),
        (["workers=3", "hydra.launcher.max_tasks_per_node=2"], "cannot be split evenly"),
    ],
)
def test_a_bad_sweep_is_refused_before_anything_is_submitted(tmp_path, args, message):
    """Runs where SLURM is absent too: nothing reaches sbatch."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "suite.run",
            "-m",
            "hydra/launcher=slurm",
            *args,
            f"results_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert "[submitted]" not in out.stdout
    assert not list(tmp_path.rglob(".submitit"))


class _Handle:
    """A submitit job as wait_for sees it: done() and state, scripted per poll. A state
    read after done() may already be the next poll's (SLURM moves on between calls)."""

    def __init__(self, *polls: tuple[bool, str]) -> None:
        self.polls, self.i = list(polls), 0

    def done(self) -> bool:
        finished, _ = self.polls[min(self.i, len(self.polls) - 1)]
        return finished

    @property
    def state(self) -> str:
        _, state = self.polls[min(self.i, len(self.polls) - 1)]
        self.i += 1
        return state


def test_slurm_progress_counts_each_job_once(capsys):
    ok = _Handle((False, "PENDING"), (False, "RUNNING"), (True, "COMPLETED"))
    dead = _Handle((False, "RUNNING"), (True, "FAILED"), (True, "FAILED"))
    exiting = _Handle((False, "RUNNING"), (True, "RUNNING"), (True, "COMPLETED"))
    wait_for([ok, dead, exiting], poll_s=0)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "[slurm] 3 jobs: 0 done, 0 failed, 2 running, 1 pending",
        "[slurm] 3 jobs: 1 done, 1 failed, 1 running, 0 pending",
        "[slurm] 3 jobs: 2 done, 1 failed, 0 running, 0 pending",
    ]
    for line in lines:  # every job in exactly one column
        counts = [int(n) for n in re.findall(r"(\d+) (?:done|failed|running|pending)", line)]
        assert sum(counts) == 3 and min(counts) >= 0


def test_the_hydra_plugin_imports_neither_torch_nor_the_suite():
    """Hydra imports every ``hydra_plugins`` package when any Hydra app starts: ours
    registers the launchers' configs and leaves torch and the launchers for when one is
    instantiated."""
    code = (
        "import sys, hydra_plugins.commbench_launcher as p\n"
        "from hydra.core.config_store import ConfigStore\n"
        "names = {n.removesuffix('.yaml') for n in ConfigStore.instance().list('hydra/launcher')}\n"
        "heavy = sorted(m for m in ('torch', 'suite.sweep', 'suite.cluster') if m in sys.modules)\n"
        "print(sorted(names & {'checked', 'slurm'}), heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == "['checked', 'slurm'] []", out.stdout + out.stderr
