"""The SLURM launcher's parts that need no SLURM: job shapes and refusals before submission."""

import subprocess
import sys

import pytest

from suite.cluster import Layout, layout
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
