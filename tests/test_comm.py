"""``Comm`` collectives on real gloo ranks: values, and the three byte counters exactly."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from helpers import run_ranks

from suite.dist import Comm


def _gather(rank, comm, shape):
    mine = torch.full(shape, float(rank + 1))
    mine[0] = -rank  # something rank-specific beyond the fill
    got = comm.all_gather(mine)
    mine.fill_(99.0)  # the gathered tensors are copies, not views of the input
    counters = (comm.bytes_payload, comm.bytes_paper, comm.bytes_moved)
    return {"got": got, "counters": counters, "seconds": comm.seconds}


@pytest.mark.parametrize("workers", [2, 3])
def test_all_gather_returns_every_rank_in_order_and_counts_exactly(tmp_path, workers):
    shape = (5, 2)
    results = run_ranks(_gather, workers, tmp_path, shape)
    b = 5 * 2 * 4  # fp32
    for rank, res in enumerate(results):
        assert len(res["got"]) == workers
        for src, t in enumerate(res["got"]):
            want = torch.full(shape, float(src + 1))
            want[0] = -src
            assert torch.equal(t, want), (rank, src)
        payload, paper, moved = res["counters"]
        assert payload == b
        assert paper == b + (workers - 1) * b  # upload b, download the other S-1
        assert moved == 2 * (workers - 1) * b  # ring: sends and receives (S-1)·b
        assert res["seconds"] > 0


def test_all_gather_on_one_rank_is_a_copy_and_counts_nothing():
    comm = Comm(0, 1, torch.device("cpu"))
    x = torch.arange(4.0)
    (got,) = comm.all_gather(x)
    x.zero_()
    assert got.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert (comm.bytes_payload, comm.bytes_paper, comm.bytes_moved) == (0, 0, 0)


def _gather_uncounted(rank, comm):
    with comm.uncounted():
        comm.all_gather(torch.ones(3))
    return (comm.bytes_payload, comm.bytes_paper, comm.bytes_moved, comm.seconds)


def test_all_gather_under_uncounted_counts_nothing(tmp_path):
    assert run_ranks(_gather_uncounted, 2, tmp_path) == [(0, 0, 0, 0.0)] * 2


_RANK_THAT_EXITS = r"""
import os, sys, torch
from suite.dist import Rendezvous, destroy_process_group, init_process_group
init_process_group(Rendezvous(int(sys.argv[1]), 2), torch.device("cpu"), 60)
model = torch.nn.Linear(4, 4)
model(torch.ones(2, 4)).sum().backward()
torch.optim.SGD(model.parameters(), lr=0.1).step()  # its first use imports torch._dynamo
flat = torch.ones(8)
torch.distributed.all_reduce(flat)
destroy_process_group()
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print("gloo threads:", sorted(n for n in names if "gloo" in n))
"""


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
@pytest.mark.skipif(sys.platform != "linux", reason="reads the threads from /proc")
def test_a_rank_started_by_a_scheduler_leaves_no_gloo_thread_behind(tmp_path):
    """A rank in its own interpreter (SLURM task, torchrun) that builds an optimizer after
    joining the group: destroy_process_group must end gloo's threads. One left running
    can still be releasing a collective's tensors at interpreter exit, which aborts the
    process after a completed run (a FAILED SLURM job)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK_THAT_EXITS, str(rank)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    for proc in ranks:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert "gloo threads: []" in out, out
