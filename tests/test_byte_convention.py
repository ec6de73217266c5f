"""The suite's byte convention, one tensor moved by each Comm operation on real gloo
ranks: ``bytes_moved`` counts, for every operation alike, what a rank sends plus what
it receives on the wire, so the same traffic costs the same whichever operation carries
it; ``bytes_paper`` keeps each paper's own accounting (an all-reduce as a parameter
server's upload plus download, a point-to-point transfer once at its sender)."""

from __future__ import annotations

import pytest
import torch

from suite.spawn import run_ranks

N = 1000  # fp32 elements: b = 4000 bytes
B = 4 * N


def _counters(comm) -> dict[str, int]:
    return {k: getattr(comm, k) for k in ("bytes_moved", "bytes_paper", "bytes_payload")}


def _one_of_each(rank: int, comm) -> dict[str, dict[str, int]]:
    out = {}
    x = torch.full((N,), float(rank + 1))
    comm.all_reduce_([x])
    assert torch.all(x == sum(range(1, comm.world_size + 1)))
    out["all_reduce"] = _counters(comm)
    before = _counters(comm)
    # The same traffic as an exchange: every rank sends its b to each other rank... at 2
    # ranks, rank 0 -> 1 and 1 -> 0, b each way.
    peer = 1 - rank
    got = torch.empty(N)
    comm.exchange({peer: torch.full((N,), float(rank))}, {peer: got})
    assert torch.all(got == float(peer))
    out["swap"] = {k: v - before[k] for k, v in _counters(comm).items()}
    before = _counters(comm)
    # One way only: rank 0 sends b to rank 1.
    if rank == 0:
        comm.exchange({1: torch.ones(N)}, {})
    else:
        comm.exchange({}, {0: torch.empty(N)})
    out["send"] = {k: v - before[k] for k, v in _counters(comm).items()}
    return out


@pytest.fixture(scope="module")
def counts(tmp_path_factory):
    return run_ranks(_one_of_each, 2, tmp_path_factory.mktemp("conv"))


def test_moved_is_sent_plus_received_for_every_operation(counts):
    # A ring all-reduce of b at S = 2: each rank sends b/2 and receives b/2 in the
    # reduce-scatter, the same in the all-gather: b sent + b received.
    assert [c["all_reduce"]["bytes_moved"] for c in counts] == [2 * B, 2 * B]
    # A swap: each rank sends b and receives b.
    assert [c["swap"]["bytes_moved"] for c in counts] == [2 * B, 2 * B]
    # One transfer: b at the sender and b at the receiver, 2b in all.
    assert [c["send"]["bytes_moved"] for c in counts] == [B, B]


def test_the_same_traffic_costs_the_same_whichever_operation_carries_it(counts):
    # At two ranks an all-reduce and a swap put the same bytes on the wire.
    assert sum(c["all_reduce"]["bytes_moved"] for c in counts) == sum(
        c["swap"]["bytes_moved"] for c in counts
    )


def test_paper_convention_is_each_papers_own(counts):
    # Parameter-server view of an all-reduce: upload b and download b per rank.
    assert [c["all_reduce"]["bytes_paper"] for c in counts] == [2 * B, 2 * B]
    # A point-to-point transfer once, at its sender: the swap counts half the
    # all-reduce's bytes for the same wire traffic (why figures plot bytes_moved).
    assert [c["swap"]["bytes_paper"] for c in counts] == [B, B]
    assert [c["send"]["bytes_paper"] for c in counts] == [B, 0]
