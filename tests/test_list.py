"""``python -m suite.list``: what is installed, as a user sees it."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def plugins(root: Path) -> dict[str, str]:
    """Two installed plugins as pip would leave them: tests/faulty.py, which loads, and
    one whose module does not exist."""
    for name, line in (("faulty", "faulty = faulty"), ("broken", "broken = no_such_module")):
        info = root / f"commbench_{name}-0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: commbench-{name}\nVersion: 0\n"
        )
        (info / "entry_points.txt").write_text(f"[commbench.protocols]\n{line}\n")
    path = os.pathsep.join([str(root), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def test_lists_protocols_data_models_optimizers_and_broken_plugins(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "suite.list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=plugins(tmp_path / "site"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()

    def line(start: str) -> str:
        (found,) = [x for x in lines if x.startswith(start)]
        return found

    assert "'data parallel' from commbench: (no knobs)" in line("  ddp ")
    assert "local_steps=10" in line("  localsgd ") and "optimizer_state=keep" in line("  localsgd ")
    assert "from commbench-faulty: fail_rank=1 fail_round=3" in line("  faulty ")
    assert "batch_size=128" in line("  fashion_mnist ") and "downsample=1" in line(
        "  fashion_mnist "
    )
    assert "hidden=1024" in line("  mlp ")
    assert "lr=0.001" in line("  adamw ") and "weight_decay=0.01" in line("  adamw ")
    assert "ModuleNotFoundError" in line("  broken (no_such_module): ")
