"""DiLoCo and PowerSGD against independent references; AdamW from the command line."""

import copy

import pytest
import torch
from helpers import problem, run_ranks
from torch import nn

import protocols
from protocols.powersgd import PowerSGD, PowerSGDConfig, orthogonalize, plan
from suite.optimizers import SGD
from suite.train import make_optimizer_factory


def _net():
    torch.manual_seed(0)
    # Backward order (DDP's bucket): fc, conv 8→12, conv 12→8, conv 8→12: torch's hook
    # processes the two 12×72 gradients together, before the 8×108 one between them.
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(12, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12 * 8 * 8, 10),
    )


def _powersgd_vs_torch(rank, comm, matrix_rank, steps):
    from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import (
        PowerSGDState,
        powerSGD_hook,
    )
    from torch.nn.parallel import DistributedDataParallel

    ours = _net()
    theirs = copy.deepcopy(ours)
    ddp = DistributedDataParallel(theirs, bucket_cap_mb=1000)  # one bucket
    state = PowerSGDState(
        process_group=None,
        matrix_approximation_rank=matrix_rank,
        start_powerSGD_iter=2,  # torch needs >= 2 (DDP rebuilds its buckets after step 1)
        min_compression_rate=2,
        use_error_feedback=True,
        warm_start=True,
        random_seed=0,
    )
    ddp.register_comm_hook(state, powerSGD_hook)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    cfg = PowerSGDConfig(rank=matrix_rank, start_iter=2)
    proto = PowerSGD(cfg)
    make = make_optimizer_factory(SGD(lr=0.1, momentum=0.9, weight_decay=0.0))
    proto.setup(ours, comm, make, problem(ours, image_size=8))
    gen = torch.Generator().manual_seed(100 + rank)
    before = comm.bytes_paper
    for _ in range(steps):
        x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(10, (16,), generator=gen)
        opt_theirs.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt_theirs.step()
        work = proto.begin_round(0)
        work.optimizer.zero_grad()
        work.loss(x, y).backward()
        proto.after_backward(work)
        work.optimizer.step()
    return {
        "ours": ours.state_dict(),
        "theirs": theirs.state_dict(),
        "bytes": comm.bytes_paper - before,
        "formula": PowerSGD.paper_bytes_per_round(cfg, problem(ours), 2),
        "full": 2 * 2 * 4 * sum(p.numel() for p in ours.parameters()),
    }


@pytest.mark.parametrize("matrix_rank", [1, 2, 4])
def test_powersgd_equals_torchs_hook_inside_ddp(tmp_path, matrix_rank):
    """Eight steps on two gloo ranks (two of plain all-reduce, then compressed with warm
    start and error feedback; rank 4 takes the QR path): our parameters equal those of
    torch DDP with torch's own powerSGD_hook."""
    results = run_ranks(_powersgd_vs_torch, 2, tmp_path, matrix_rank, 8)
    for r in results:
        for key, value in r["theirs"].items():
            assert torch.allclose(r["ours"][key], value, atol=1e-5), (matrix_rank, key)
    # Bytes, summed over the two ranks: 2 plain steps, then 6 compressed ones.
    total = sum(r["bytes"] for r in results)
    assert total == 2 * results[0]["full"] + 6 * results[0]["formula"]
    assert results[0]["formula"] < results[0]["full"]


def test_compression_plan_follows_torchs_rule():
    shapes = [torch.Size(s) for s in [(10,), (10, 512), (8, 6, 3, 3), (6, 6, 3, 3), (6, 1, 3, 3)]]
    compressed, whole = plan(shapes, 2, 2.0)
    # (n + m)·r·2 < n·m: 10×512 yes, 8×54 yes, 6×54 yes, 6×9 no; vectors never.
    assert compressed == [1, 2, 3] and whole == [0, 4]
    m = torch.randn(3, 20, 2)
    orthogonalize(m)
    eye = torch.eye(2).expand(3, 2, 2)
    assert torch.allclose(m.transpose(1, 2) @ m, eye, atol=1e-5)


def _diloco_outer_steps(rank, comm):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    cfg = protocols.parse_config({"name": "diloco", "outer_lr": 0.7, "outer_momentum": 0.9})
    proto = protocols.build(cfg)
    proto.setup(model, comm, make_optimizer_factory(SGD()), problem(model))
    start = [p.detach().clone() for p in model.parameters()]
    seen = []
    for r in range(3):
        proto.begin_round(r)
        with torch.no_grad():  # "inner training": a rank- and round-dependent change
            for p in model.parameters():
                p.mul_(1 + 0.1 * (rank + 1)).add_(0.01 * (rank + 1) * (r + 1))
        proto.end_round(r, proto.work)
        seen.append([p.detach().clone() for p in model.parameters()])
    return {"start": start, "after": seen, "bytes": comm.bytes_paper}


def test_diloco_outer_step_is_nesterov_sgd_on_the_averaged_change(tmp_path):
    """Three rounds on two ranks against the rule written out: Δ = θ − mean_k θ_k,
    b ← 0.9·b + Δ (b = Δ at first), θ ← θ − 0.7·(Δ + 0.9·b)."""
    r0, r1 = run_ranks(_diloco_outer_steps, 2, tmp_path)
    theta = r0["start"]
    buf = None
    for r in range(3):
        local = [
            [t * (1 + 0.1 * (k + 1)) + 0.01 * (k + 1) * (r + 1) for t in theta] for k in range(2)
        ]
        delta = [t - (a + b) / 2 for t, a, b in zip(theta, *local, strict=True)]
        buf = delta if buf is None else [0.9 * b + d for b, d in zip(buf, delta, strict=True)]
        theta = [t - 0.7 * (d + 0.9 * b) for t, d, b in zip(theta, delta, buf, strict=True)]
        for got0, got1, want in zip(r0["after"][r], r1["after"][r], theta, strict=True):
            assert torch.allclose(got0, want, atol=1e-6) and torch.equal(got0, got1)
    params = 3 * 2 + 2
    assert r0["bytes"] + r1["bytes"] == 3 * 2 * 2 * 4 * params  # all-reduce of θ per round
