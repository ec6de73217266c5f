"""Process-group set-up and teardown, and ``Comm``: the collectives protocols use.

``Comm`` counts bytes and times every collective a protocol issues, so communication
is accounted in one place, identically for every protocol. Three byte counts are kept:

- ``bytes_moved``: **the suite's convention, the same for every operation**: what this
  rank sends plus what it receives on the wire. A ring all-reduce of b bytes sends and
  receives 2·(S-1)/S·b each (4·(S-1)/S·b in all); a point-to-point transfer of b counts
  b at its sender and b at its receiver (a transfer to oneself: nothing); a ring
  all-gather of b bytes per rank sends and receives (S-1)·b each. The same
  traffic therefore counts the same whichever operation carries it (at two ranks an
  all-reduce of b and a swap of b each way both count 2b per rank); figures and
  cross-protocol comparisons use this count.
- ``bytes_paper``: each paper's own accounting, kept so that every protocol's formula
  (``paper_bytes_per_round``, the ResIST paper's Table 1) can be checked against what
  the runs record. It is a parameter server's view: an all-reduce of b bytes is an
  upload and a download by every rank (2b per rank; summed over ranks local SGD's
  2·S·|θ|·4 per round), and a point-to-point transfer counts its bytes once, at the
  sender, including a rank's transfer to itself (its own share of a scatter or gather,
  as the papers count it). An all-gather of b per rank is an upload of b and a download
  of the other S-1 shares (S·b per rank). So the same wire traffic counts half as much
  when a protocol moves it point-to-point (AuxNet, IST, ResIST's blocks) as when it is all-reduced:
  compare protocols by ``bytes_moved``, not by this. Counted from the tensors handed
  over, never from a protocol's own arithmetic.
- ``bytes_payload``: bytes of tensor data this rank handed to collectives (b for an
  all-reduce or an all-gather of b bytes).

Measurement collectives (clock sync, metric reduction) go through ``reduce_stats`` and
are not counted: they are instrumentation, not part of any protocol. A ``Comm`` with
world size 1 performs no collectives at all, which keeps unit tests trivial.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rendezvous:
    """Where ranks meet: a TCP store, or the environment (torchrun / submitit export)."""

    rank: int
    world_size: int
    host: str = "127.0.0.1"
    port: int = 0  # 0: read MASTER_ADDR/MASTER_PORT from the environment (env://)


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (a launcher killed with kill -9
    must not leave ranks waiting on collectives); a no-op elsewhere."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGKILL) != 0:  # 1 = PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # A rank forked by the fork server has the server as its OS parent; the server
    # exits when the launcher does, so the chain holds. The launcher itself may have
    # died before we asked: its end of the pipe is then closed.
    parent = mp.parent_process()
    if parent is not None and not parent.is_alive():
        raise RuntimeError("the launcher is already gone")


def pick_device(device: str, local_rank: int) -> torch.device:
    """``auto`` picks CUDA when present (one GPU per rank, round robin), else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("launcher.device=cuda but no CUDA device is visible")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def backend_for(device: torch.device, choice: str = "auto") -> str:
    """``auto``: NCCL on GPUs, gloo otherwise; or the one chosen (gloo also runs on GPU
    tensors, which lets several ranks share one GPU)."""
    if choice == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    return choice


def init_process_group(
    rdv: Rendezvous, device: torch.device, timeout_s: float, backend: str = "auto"
) -> None:
    """Join the run's process group (``backend_for``)."""
    if rdv.world_size == 1:
        return
    # torch._dynamo (which torch.optim imports on first use) takes references to the
    # default group when it is imported: imported after the group, it keeps the group
    # and gloo's worker threads alive past destroy_process_group. A worker thread still
    # releasing a finished collective at interpreter exit then aborts the process
    # (SIGABRT after a completed run: a FAILED SLURM job, a failed torchrun). Imported
    # first, it holds nothing. Ranks forked from the fork server have it already.
    import torch._dynamo  # noqa: F401

    backend = backend_for(device, backend)
    timeout = timedelta(seconds=timeout_s)
    if rdv.port:
        store = dist.TCPStore(rdv.host, rdv.port, is_master=False, timeout=timeout)
        dist.init_process_group(
            backend, store=store, rank=rdv.rank, world_size=rdv.world_size, timeout=timeout
        )
    else:
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=rdv.rank,
            world_size=rdv.world_size,
            timeout=timeout,
        )


def destroy_process_group() -> None:
    """Tear the group down if one exists (safe to call on any path)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One flat buffer holding ``tensors`` in order (the unit every collective sends)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def unflatten_into(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """Copy consecutive slices of ``flat`` back into ``tensors`` (inverse of ``flatten``)."""
    offset = 0
    for t in tensors:
        t.detach().copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


class Comm:
    """Collectives over the run's process group, with byte and time accounting."""

    def __init__(
        self, rank: int, world_size: int, device: torch.device, backend: str = "auto"
    ) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        # gloo's point-to-point transfers take host memory only: stage GPU tensors.
        self.stage = device.type == "cuda" and backend_for(device, backend) == "gloo"
        self.bytes_payload = 0
        self.bytes_paper = 0
        self.bytes_moved = 0
        self.seconds = 0.0
        self.counting = True

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _timed(self, fn: Callable[[], object], payload: int, paper: int, moved: int) -> None:
        self._sync()
        start = time.perf_counter()
        fn()
        self._sync()
        if self.counting:
            self.seconds += time.perf_counter() - start
            self.bytes_payload += payload
            self.bytes_paper += paper
            self.bytes_moved += moved

    @contextmanager
    def uncounted(self) -> Iterator[None]:
        """Collectives inside are neither counted nor timed (e.g. gathering for evaluation)."""
        previous, self.counting = self.counting, False
        try:
            yield
        finally:
            self.counting = previous

    def all_reduce_mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average tensors across ranks in place, as one flat buffer (one collective)."""
        self.all_reduce_(tensors, mean=True)

    def all_reduce_(self, tensors: Sequence[torch.Tensor], mean: bool = False) -> None:
        """Sum (or average) tensors across ranks in place, as one flat buffer."""
        if self.world_size == 1 or not tensors:
            return
        flat = flatten(tensors)
        nbytes = flat.numel() * flat.element_size()
        ring = 2 * 2 * (self.world_size - 1) * nbytes // self.world_size
        self._timed(lambda: dist.all_reduce(flat, op=dist.ReduceOp.SUM), nbytes, 2 * nbytes, ring)
        unflatten_into(flat.div_(self.world_size) if mean else flat, tensors)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor``, in rank order (one collective): each rank hands over a
        tensor of the same shape and dtype and gets all S of them back as a list of new
        tensors (its own included, as a copy). Counts b = ``tensor``'s bytes as payload,
        S·b paper bytes (upload b, download the other S-1) and 2·(S-1)·b moved (a ring).
        At world size 1: ``[tensor.clone()]``, no collective, nothing counted."""
        flat = tensor.detach().contiguous()
        if self.world_size == 1:
            return [flat.clone()]
        out = [torch.empty_like(flat) for _ in range(self.world_size)]
        nbytes = flat.numel() * flat.element_size()
        others = (self.world_size - 1) * nbytes
        self._timed(lambda: dist.all_gather(out, flat), nbytes, nbytes + others, 2 * others)
        return out

    def exchange(self, sends: dict[int, torch.Tensor], recvs: dict[int, torch.Tensor]) -> None:
        """Point-to-point: send ``sends[peer]`` to each peer and fill ``recvs[peer]`` from
        each, all in one batch. Every rank must post the matching other half. A rank may
        name itself as a peer: that transfer is a local copy (see the byte conventions).
        Under gloo, GPU tensors travel through host memory (inside the timed part)."""
        me = self.rank
        if me in sends or me in recvs:
            recvs[me].copy_(sends[me])
        out = {p: t for p, t in sorted(sends.items()) if p != me and t.numel()}
        into = {p: t for p, t in sorted(recvs.items()) if p != me and t.numel()}

        def run() -> None:
            wire_out = {p: t.cpu() for p, t in out.items()} if self.stage else out
            wire_in = (
                {p: torch.empty(t.shape, dtype=t.dtype) for p, t in into.items()}
                if self.stage
                else into
            )
            ops = [dist.P2POp(dist.isend, t, p) for p, t in wire_out.items()]
            ops += [dist.P2POp(dist.irecv, t, p) for p, t in wire_in.items()]
            if ops:
                for req in dist.batch_isend_irecv(ops):
                    req.wait()
            if self.stage:
                for p, t in wire_in.items():
                    into[p].copy_(t)

        sent = sum(t.numel() * t.element_size() for t in sends.values())
        wire = sum(t.numel() * t.element_size() for t in out.values())
        got = sum(t.numel() * t.element_size() for t in into.values())
        if self.world_size > 1 and sent + got:
            self._timed(run, sent, sent, wire + got)

    def broadcast_(self, tensors: Iterable[torch.Tensor], src: int = 0) -> None:
        """Make every rank's tensors equal to ``src``'s. Uncounted: used for set-up only."""
        if self.world_size == 1:
            return
        tensors = list(tensors)
        flat = flatten(tensors)
        dist.broadcast(flat, src=src)
        unflatten_into(flat, tensors)

    def reduce_stats(self, values: Sequence[float], op: str = "sum") -> list[float]:
        """Sum or max of a few numbers over ranks, for measurement only (not counted)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return [float(v) for v in t.tolist()]

    def barrier(self) -> None:
        """Wait for every rank (not counted)."""
        if self.world_size > 1:
            dist.barrier()
