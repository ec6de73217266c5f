"""``Comm`` collectives on real gloo ranks: values, and the three byte counters exactly."""

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
