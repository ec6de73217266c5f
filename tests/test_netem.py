"""The emulated cluster (``launcher.link``): rate parsing, refusals, and on a root machine
with iproute2, real shaped links between namespaces that always disappear afterwards."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import tiny_config

from suite import netem
from suite.architectures import MLPConfig
from suite.config import ConfigError
from suite.launch import execute, validate
from suite.spawn import run_ranks

CAN_NETEM = os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("tc") is not None
needs_netem = pytest.mark.skipif(
    not CAN_NETEM, reason="emulated clusters need root and iproute2's ip and tc"
)


@pytest.mark.parametrize(
    "text, bits",
    [
        ("10gbit", 10**10),
        ("1gbit", 10**9),
        ("100mbit", 10**8),
        ("500kbit", 5 * 10**5),
        ("1.5Gbit", 15 * 10**8),
        ("125mbps", 10**9),  # tc: bps is bytes per second
    ],
)
def test_tc_rates_parse_to_bits_per_second(text, bits):
    assert netem.parse_rate(text) == bits


@pytest.mark.parametrize("text", ["fast", "10", "10gb", "-1gbit", "0mbit", "5tbit", "1 g bit"])
def test_an_invalid_rate_is_refused_with_valid_examples(text):
    with pytest.raises(ConfigError, match=r"launcher\.link=.*e\.g\. 10gbit, 1gbit, 100mbit"):
        netem.parse_rate(text)


def test_the_bucket_follows_the_rate_within_bounds():
    assert netem.burst_bytes(10**8) == 64 << 10  # 100mbit: the 64 KiB floor
    assert netem.burst_bytes(10**9) == 250_000  # 1gbit: 2 ms
    assert netem.burst_bytes(10**12) == 4 << 20  # the cap


def test_check_refuses_what_cannot_be_built(monkeypatch):
    with pytest.raises(ConfigError, match=r"1\.\.250 workers"):
        netem.check("1gbit", 251)
    with pytest.raises(ConfigError, match="not a rate"):
        netem.check("quick", 2)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ConfigError, match=r"needs root.*launcher\.link=null"):
        netem.check("1gbit", 2)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "tc" else "/sbin/ip")
    with pytest.raises(ConfigError, match="iproute2's tc"):
        netem.check("1gbit", 2)


def test_validate_refuses_a_bad_link_before_any_process_starts():
    cfg = tiny_config("ddp", 2)
    bad = dataclasses.replace(cfg, launcher=dataclasses.replace(cfg.launcher, link="1gigabit"))
    with pytest.raises(ConfigError, match="not a rate"):
        validate(bad)


def test_names_fit_the_kernel_and_carry_their_owner():
    tag = netem._tag(36**5 - 1, 36**2 - 1)  # the largest pid and sequence number
    assert len(f"{tag}h{netem.MAX_WORKERS - 1}") <= 15
    for suffix in ("b", "h7", "w249", "-r3"):
        assert netem._owner(f"{tag}{suffix}") == 36**5 - 1
    assert netem._owner("eth0") is None and netem._owner(f"{tag}x") is None


def _ours(tag: str) -> list[str]:
    names = netem._links() + netem._namespaces()
    return [n for n in names if n.startswith(tag)]


def _timed_all_reduce(rank: int, comm, numel: int) -> tuple[float, float, str]:
    t = torch.ones(numel)
    dist.all_reduce(t)  # connections set up, off the clock
    times = []
    for _ in range(2):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - start)
    return min(times), float(t[0]), os.environ.get("GLOO_SOCKET_IFNAME", "")


@needs_netem
def test_a_shaped_link_slows_a_real_all_reduce_to_its_rate_and_leaves_nothing(tmp_path):
    numel, link = 250_000, "50mbit"  # 1 MB; a 2-rank ring sends all of it each way
    before = set(netem._links() + netem._namespaces())
    results = run_ranks(_timed_all_reduce, 2, tmp_path, numel, link=link)
    assert set(netem._links() + netem._namespaces()) == before
    assert [value for _, value, _ in results] == [8.0, 8.0]  # 1 → 2 → 4 → 8: three sums
    assert [iface[-2:] for *_, iface in results] == ["w0", "w1"]  # each rank on its veth
    bound = numel * 4 * 8 / netem.parse_rate(link)  # seconds to send 1 MB at 50 Mbit/s
    for seconds, _, _ in results:
        assert 0.9 * bound <= seconds <= 4 * bound, (seconds, bound)
    fast = run_ranks(_timed_all_reduce, 2, tmp_path, numel)  # loopback, for contrast
    assert max(seconds for seconds, _, _ in fast) < 0.5 * bound


@needs_netem
def test_teardown_on_an_exception_and_on_ctrl_c_and_clusters_do_not_collide():
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error), netem.cluster(3, "1gbit") as outer:
            with netem.cluster(2, "100mbit") as inner:  # a concurrent cluster
                assert not set(outer.namespaces) & set(inner.namespaces)
                assert outer.master_addr.rsplit(".", 1)[0] != inner.master_addr.rsplit(".", 1)[0]
                assert len(_ours(outer.bridge[:-1])) == 7 and len(_ours(inner.bridge[:-1])) == 5
            assert _ours(inner.bridge[:-1]) == []
            raise error("boom")
        assert _ours(outer.bridge[:-1]) == []


@needs_netem
def test_a_cluster_whose_owner_was_killed_is_removed_as_stale(tmp_path):
    script = (
        "import sys, time; from suite import netem\n"
        "with netem.cluster(2, '1gbit') as net:\n"
        "    print(net.bridge[:-1], flush=True); time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        tag = owner.stdout.readline().strip()
        assert len(_ours(tag)) == 5
    finally:
        owner.kill()  # kill -9: no teardown runs
        owner.wait()
    assert len(_ours(tag)) == 5
    assert tag in netem.clean_stale()
    assert _ours(tag) == []


@needs_netem
def test_a_run_on_an_emulated_cluster_completes_and_cleans_up(tmp_path):
    cfg = tiny_config(
        "localsgd",
        2,
        results_dir=str(tmp_path),
        model=MLPConfig(hidden=64),
        train={"data_epochs": 0.25, "eval_every": 1.0, "checkpoint": False},
        launcher={"link": "1gbit"},
    )
    before = set(netem._links() + netem._namespaces())
    summary = execute(cfg)
    assert summary["status"] == "completed", summary
    assert summary["bytes"] > 0 and summary["comm_s"] > 0
    assert set(netem._links() + netem._namespaces()) == before
    assert Path(summary["run_dir"]).name.endswith(cfg.run_name()[-10:])


@needs_netem
def test_a_named_cluster_lasts_until_down_and_its_hosts_reach_each_other():
    """What ``.ci/slurm-up`` builds its nodes on: namespaces that outlive the process that
    made them (no owner pid in their names, so no stale-clean removes them)."""
    name = "cbtestx"[2:]  # 'testx': a lasting name is not in the pid-owned 'cb...' space
    try:
        net = netem.up(name, 2)
        assert net.namespaces == (f"{name}-r0", f"{name}-r1") and net.bridge == f"{name}b"
        assert len({net.master_addr, *net.addresses}) == 3
        assert set(net.namespaces) <= set(netem._namespaces())
        assert name not in netem.clean_stale()  # not owned by a (gone) pid: it stays
        assert set(net.namespaces) <= set(netem._namespaces())
        # A TCP connection from host 0 to host 1, each inside its own namespace.
        target = (net.addresses[1], 29517)
        listen = (
            f"import socket; s = socket.create_server({target!r}); print('up', flush=True); "
            "c, _ = s.accept(); c.sendall(b'hello')"
        )
        dial = f"import socket; print(socket.create_connection({target!r}, 5).recv(5))"
        ns = ["ip", "netns", "exec"]
        server = subprocess.Popen(
            [*ns, net.namespaces[1], sys.executable, "-c", listen],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        client = subprocess.run(
            [*ns, net.namespaces[0], sys.executable, "-c", dial], capture_output=True, text=True
        )
        assert server.wait(10) == 0 and client.stdout.strip() == "b'hello'", client.stderr
        with pytest.raises(ConfigError, match="2-8 lower-case"):
            netem.up("cb1234", 2)
    finally:
        netem.down(name)
    assert not set(netem._namespaces()) & {f"{name}-r0", f"{name}-r1"}
    assert f"{name}b" not in netem._links()
