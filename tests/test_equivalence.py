"""Equivalences between protocols and exact byte counts, on real gloo process groups."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import run_ranks, tiny_config, train_rank
from torch.nn.parallel import DistributedDataParallel

import protocols
from suite.data import TrainBatches, load_dataset
from suite.dist import Comm
from suite.problem import build, problem_info
from suite.train import make_optimizer_factory, train

CPU = torch.device("cpu")


def _assert_states_close(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=atol, rtol=1e-4), key


def _num_params(cfg):
    return sum(p.numel() for p in build(cfg, load_dataset(cfg.data), CPU).parameters())


@pytest.mark.parametrize(("bn", "data_epochs"), [("batch", 0.15), ("none", 0.5)])
def test_localsgd_with_one_local_step_equals_ddp(tmp_path, bn, data_epochs):
    # Equal in exact arithmetic (SGD with momentum and weight decay is linear in the
    # gradient); batch-statistics BN amplifies fp32 round-off (measured 2e-7 after 7
    # steps, 1e-4 after 23), so the BN case is compared over a short horizon.
    kw = {"model": {"bn": bn}, "train": {"data_epochs": data_epochs, "eval_every": 0.25}}
    ddp = tiny_config("ddp", **kw)
    local = tiny_config("localsgd", protocol_kw={"local_steps": 1, "optimizer_state": "keep"}, **kw)
    a = run_ranks(train_rank, 2, tmp_path, ddp)
    b = run_ranks(train_rank, 2, tmp_path, local)
    assert a[0]["summary"]["steps"] == b[0]["summary"]["steps"] >= 7
    _assert_states_close(a[0]["state"], b[0]["state"])
    _assert_states_close(b[0]["state"], b[1]["state"], atol=0)  # replicas agree after a sync


def _ours_vs_torch_ddp(rank, comm, steps):
    cfg = tiny_config("ddp", model={"bn": "running"})
    ds = load_dataset(cfg.data)
    ours = build(cfg, ds, CPU)
    theirs = copy.deepcopy(ours)
    make = make_optimizer_factory(cfg.optim)
    proto = protocols.build(cfg.protocol)
    proto.setup(ours, comm, make, problem_info(cfg, ds, ours))
    reference = DistributedDataParallel(theirs)
    ref_opt = make(reference.parameters())
    batches = TrainBatches(ds, rank, comm.world_size, 16, "disjoint", 0, CPU)
    for _ in range(steps):
        x, y = next(batches)
        work = proto.begin_round(0)
        loss = F.cross_entropy(work.module(x), y)
        work.optimizer.zero_grad()
        loss.backward()
        proto.after_backward(work)
        work.optimizer.step()
        ref_loss = F.cross_entropy(reference(x), y)
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
    return ours.state_dict(), theirs.state_dict(), comm.bytes_payload


def test_our_ddp_equals_torch_distributed_data_parallel(tmp_path):
    steps = 6
    results = run_ranks(_ours_vs_torch_ddp, 2, tmp_path, steps)
    for rank, (ours, theirs, _) in enumerate(results):
        if rank == 0:  # torch DDP broadcasts rank 0's BN buffers; rank 0 keeps its own
            _assert_states_close(ours, theirs)
        else:
            params = [k for k in ours if "running" not in k and "num_batches" not in k]
            _assert_states_close({k: ours[k] for k in params}, {k: theirs[k] for k in params})
    num = sum(
        v.numel() for k, v in results[0][0].items() if "running" not in k and "num_batches" not in k
    )
    assert results[0][2] == steps * num * 4


def test_ddp_on_disjoint_shards_equals_one_worker_with_n_times_the_batch(tmp_path):
    common = {"model": {"bn": "none"}, "data": {"augment": False}}
    two = tiny_config("ddp", workers=2, **common)
    one = tiny_config(
        "single", workers=1, **{**common, "data": {"augment": False, "batch_size": 32}}
    )
    parallel = run_ranks(train_rank, 2, tmp_path, two)[0]
    serial = train(one, Comm(0, 1, CPU), CPU)
    assert parallel["summary"]["steps"] == serial.summary["steps"]
    _assert_states_close(parallel["state"], serial.model.state_dict())


@pytest.mark.parametrize("workers", [2, 3])
def test_ddp_byte_count_is_exact(tmp_path, workers):
    cfg = tiny_config("ddp", workers=workers)
    summary = run_ranks(train_rank, workers, tmp_path, cfg)[0]["summary"]
    per_rank = _num_params(cfg) * 4
    assert summary["bytes_payload"] == summary["steps"] * workers * per_rank
    assert summary["bytes"] == summary["steps"] * 2 * workers * per_rank


@pytest.mark.parametrize(
    ("bn", "optimizer_state", "per_param_copies"),
    [("batch", "keep", 1), ("batch", "average", 2), ("running", "keep", 1)],
)
def test_localsgd_byte_count_is_exact(tmp_path, bn, optimizer_state, per_param_copies):
    cfg = tiny_config(
        "localsgd",
        protocol_kw={"local_steps": 4, "optimizer_state": optimizer_state},
        model={"bn": bn},
    )
    summary = run_ranks(train_rank, 2, tmp_path, cfg)[0]["summary"]
    model = build(cfg, load_dataset(cfg.data), CPU)
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    per_round = (per_param_copies * _num_params(cfg) + buffers) * 4
    assert summary["rounds"] == -(-summary["steps"] // 4)
    assert summary["bytes"] == summary["rounds"] * 2 * 2 * per_round


def test_localsgd_reset_clears_momentum_each_round(tmp_path):
    keep = tiny_config("localsgd", protocol_kw={"local_steps": 4})
    reset = tiny_config("localsgd", protocol_kw={"local_steps": 4, "optimizer_state": "reset"})
    a = run_ranks(train_rank, 2, tmp_path, keep)[0]["state"]
    b = run_ranks(train_rank, 2, tmp_path, reset)[0]["state"]
    assert any(not torch.allclose(a[k], b[k]) for k in a)


def test_channels_last_and_bf16_train_the_same_model(tmp_path):
    """The memory layout changes only the order of float sums; bf16 autocast stays near
    (11 steps: its rounding compounds, so the bound is loose but far from a broken run).
    Bytes communicated are identical either way (the wire format stays fp32)."""
    base = tiny_config("localsgd", 2, train={"data_epochs": 0.25, "eval_every": 0.25})
    runs = {}
    for name, changes in {
        "fp32": {},
        "channels_last": {"channels_last": True},
        "bf16": {"precision": "bf16"},
    }.items():
        cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, **changes))
        runs[name] = run_ranks(train_rank, 2, tmp_path, cfg)[0]
    ref = runs["fp32"]
    for name, tol in (("channels_last", 1e-4), ("bf16", 0.25)):
        got = runs[name]
        assert got["summary"]["bytes"] == ref["summary"]["bytes"]
        worst = 0.0
        for key, value in ref["state"].items():
            if value.is_floating_point():
                err = (got["state"][key] - value).abs().max().item()
                assert err <= tol * max(1.0, value.abs().max().item()), (name, key, err)
                worst = max(worst, err)
        if name == "bf16":
            assert worst > 1e-4  # autocast really ran in bf16
