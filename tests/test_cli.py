"""The Hydra application as a user runs it: ``python -m suite.run ...`` in a subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = [
    "model.depth=18",
    "model.width=0.0625",
    "train.data_epochs=0.3",
    "train.eval_every=0.15",
    "data.batch_size=16",
    "launcher.threads=1",
]


from helpers import run_cli  # noqa: E402  (the one command-line runner of the tests)


def summaries(results: Path):
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("*/summary.json")}


def test_a_run_from_the_command_line(tmp_path):
    code, out = run_cli(*TINY, f"results_dir={tmp_path}", cwd=tmp_path)
    assert code == 0, out
    assert "[completed] ddp workers=2" in out
    (summary,) = summaries(tmp_path).values()
    assert summary["status"] == "completed" and summary["workers"] == 2


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_multirun_sweeps_protocols_and_workers(tmp_path):
    code, out = run_cli(
        "-m", "protocol=ddp,localsgd", "workers=1,2", *TINY, f"results_dir={tmp_path}", cwd=tmp_path
    )
    assert code == 0, out
    got = summaries(tmp_path)
    assert len(got) == 4 and all(s["status"] == "completed" for s in got.values())
    assert {(s["protocol"], s["workers"]) for s in got.values()} == {
        ("ddp", 1),
        ("ddp", 2),
        ("localsgd", 1),
        ("localsgd", 2),
    }
    assert "4 completed" in out  # the sweep's closing summary
    (record,) = tmp_path.glob("_hydra/*/sweep_summary.json")
    sweep = json.loads(record.read_text())
    assert sweep["counts"]["completed"] == 4 and len(sweep["runs"]) == 4

    code, out = run_cli(
        "-m", "protocol=ddp,localsgd", "workers=1,2", *TINY, f"results_dir={tmp_path}", cwd=tmp_path
    )
    assert code == 0 and "4 skipped" in out, out


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_submitit_local_launcher(tmp_path):
    code, out = run_cli(
        "-m",
        "hydra/launcher=submitit_local",
        "protocol=localsgd",
        *TINY,
        f"results_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert code == 0, out
    (summary,) = summaries(tmp_path).values()
    assert summary["status"] == "completed" and summary["protocol"] == "localsgd"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["protocol=nope"], "protocol=nope is not an option of protocol; valid: auxnet, ddp"),
        (["protocol=single"], "protocol=single trains on exactly one worker; got workers=2"),
        (["workers=0"], "workers must be an integer in 1..1024"),
        (["data=cifar10"], "set data.root=/path/to/folder"),
        (
            ["data=cifar10", "data.root=/nonexistent"],
            "cifar10 not found or corrupted under /nonexistent",
        ),
        (["+model.heads=3"], "unknown key(s) ['heads'] in model"),
    ],
)
def test_bad_input_is_refused_with_the_valid_choices(tmp_path, args, message):
    code, out = run_cli(*args, f"results_dir={tmp_path}", cwd=tmp_path)
    assert code != 0 and message in out, out
    if args == ["protocol=nope"]:
        assert "ddp" in out and "localsgd" in out and "single" in out
    assert not summaries(tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["protocol=foo"],
            "error: protocol=foo is not an option of protocol; valid: auxnet, ddp, diloco, ",
        ),
        (["data=cifar11"], "; did you mean data=cifar10?"),
        (
            ["optim.lrr=0.1"],
            "error: optim.lrr is not a key of the config; valid keys in optim: name, lr, "
            "weight_decay, schedule, milestones, gamma, momentum, nesterov; did you mean optim.lr?",
        ),
        (
            ["protocol.local_steps=5"],
            "error: protocol.local_steps is not a key of the config with protocol=ddp; "
            "valid keys in protocol: name (++protocol.local_steps=... sets a knob",
        ),
        (["-m", "protocol=ddp,foo"], "error: protocol=foo is not an option of protocol"),
        (
            ["-m", "protocol=localsgd,ddp", "protocol.local_steps=5"],
            "error: protocol.local_steps is not a key of the config with protocol=ddp;",
        ),
        (["+experiment=resist_cfar"], "did you mean +experiment=resist_cifar?"),
        (["workers=abc("], "error: invalid override: no viable alternative at input 'abc('"),
    ],
)
def test_hydra_level_mistakes_exit_2_in_one_line(tmp_path, args, message):
    """Mistakes Hydra itself finds (before main runs) are refused like every other
    configuration error: one line on stderr, the valid choices, exit 2, nothing run."""
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "suite.run", *args, f"results_dir={results}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []  # no results folder, no Hydra folder


@pytest.mark.parametrize(
    "form",
    [
        "'{}'",
        *(
            pytest.param(f, marks=pytest.mark.slow)
            for f in ("++results_dir={}", "-m|results_dir='{}'")
        ),
    ],
)
def test_every_form_of_results_dir_is_checked_and_nothing_lands_elsewhere(tmp_path, form):
    """Quoted and ++ forms of results_dir were not checked (Hydra then failed with a
    traceback) and created stray folders in the working directory."""
    work = tmp_path / "work"
    work.mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("")

    def arg(path):
        text = form.split("|")[-1]
        return text.format(path) if "=" in text else f"results_dir={text.format(path)}"

    multirun = ["-m"] if form.startswith("-m|") else []
    code, out = run_cli(*multirun, arg(f"{blocker}/a b"), cwd=work)
    assert code == 2 and f"results_dir={blocker}/a b cannot be written" in out, out
    assert "Traceback" not in out
    code, out = run_cli(*multirun, arg(f"{tmp_path}/a b"), "workers=0", cwd=work)
    assert code == 2 and "workers must be an integer in 1..1024" in out, out
    assert list(work.iterdir()) == []  # nothing outside results_dir
    assert (tmp_path / "a b").is_dir()


def test_hydras_own_flags_still_work(tmp_path):
    code, out = run_cli("--cfg", "job", f"results_dir='{tmp_path}/a b'", cwd=tmp_path)
    assert code == 0 and "results_dir: " in out and "protocol:" in out, out


def test_workers_do_not_outlive_a_killed_launcher(tmp_path):
    """kill -9 of the launching process: its workers die with it, nothing hangs on."""
    import os
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "suite.run", "train.data_epochs=20", f"results_dir={tmp_path}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ranks() -> list[int]:
        """The launcher's ranks: forked by its fork server (or spawned by it), and the
        fork server itself."""
        parent: dict[int, int] = {}
        command: dict[int, bytes] = {}
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
                command[int(entry.name)] = (entry / "cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        servers = [p for p, pp in parent.items() if pp == proc.pid and b"forkserver" in command[p]]
        found = [p for p, pp in parent.items() if pp in servers]
        found += [p for p, pp in parent.items() if pp == proc.pid and b"spawn_main" in command[p]]
        return found + servers if found else []

    deadline = time.monotonic() + 60
    while len(workers := ranks()) < 2:  # two ranks (and the fork server)
        assert time.monotonic() < deadline and proc.poll() is None, "workers never started"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in workers if _running(pid)]
        time.sleep(0.1)
    assert not alive, f"workers {alive} outlived their launcher"


def _running(pid: int) -> bool:
    """Exists and is not a zombie (a dead child not yet reaped by its new parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_a_broken_plugin_is_reported_once_and_breaks_nothing_else(tmp_path):
    """A package whose commbench.protocols entry point cannot be imported: every other
    protocol still runs, the breakage is said once, and asking for it is refused."""
    import os

    site = tmp_path / "site"
    info = site / "commbench_broken-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: commbench-broken\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[commbench.protocols]\nbroken = no_such_module_x\n")
    inherited = os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(site), inherited) if p)}
    warning = (
        "warning: the protocol plugin 'broken' (no_such_module_x, from commbench-broken) failed "
        "to load and is left out: ModuleNotFoundError: No module named 'no_such_module_x'"
    )

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "suite.run", *args, f"results_dir={tmp_path / 'r'}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )

    ok = cli("protocol=ddp", *TINY)
    assert ok.returncode == 0 and "[completed] ddp workers=2" in ok.stdout, ok.stdout + ok.stderr
    assert ok.stderr.count("protocol plugin") == 1 and warning in ok.stderr, ok.stderr
    refused = cli("protocol=broken")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: protocol=broken is a plugin that failed to load: ModuleNotFoundError: No "
        "module named 'no_such_module_x' (entry point broken = no_such_module_x of "
        "commbench-broken); reinstall or remove that package"
    )
