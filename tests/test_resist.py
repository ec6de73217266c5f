"""ResIST: partitions, aggregation on real ranks, scaling, byte accounting, learning."""

import dataclasses

import pytest
import torch
from helpers import problem, run_ranks, set_up, tiny_config, train_rank

import protocols
from protocols.resist import ResIST, deal, owners
from suite.config import LaunchConfig, RunConfig
from suite.launch import execute
from suite.models.resnet import PreActResNet, preact_resnet
from suite.seeding import seeded_generator

CPU = torch.device("cpu")


def reference_sizes(blocks, workers, min_depth):
    """The released sampler's shares (dunchen/ResIST_release), written out here: d =
    max(⌊P/S⌋, m) each, then the P − S·d blocks left over one each to the first workers."""
    d = max(blocks // workers, min_depth)
    sizes = [d] * workers
    for k in range(max(0, blocks - workers * d)):
        sizes[k] += 1
    return sizes


def reference_deal(blocks, workers, min_depth, gen):
    """The released dealing rule with this suite's RNG draws: concatenated permutations
    cut into chunks of those sizes, duplicates in a chunk dropped, padded at random."""
    sizes = reference_sizes(blocks, workers, min_depth)
    perm = []
    while len(perm) < sum(sizes):
        perm.extend(torch.randperm(blocks, generator=gen).tolist())
    chunks, at = [], 0
    for size in sizes:
        chunk = []
        for b in perm[at : at + size]:
            if b not in chunk:
                chunk.append(b)
        at += size
        while len(chunk) < size:
            b = int(torch.randint(blocks, (1,), generator=gen))
            if b not in chunk:
                chunk.append(b)
        chunks.append(sorted(chunk))
    return chunks


def test_reference_sizes_are_the_released_ones():
    assert reference_sizes(22, 4, 0) == [6, 6, 5, 5]
    assert reference_sizes(22, 8, 0) == [3, 3, 3, 3, 3, 3, 2, 2]
    assert reference_sizes(22, 2, 11) == [11, 11]
    assert reference_sizes(22, 4, 6) == [6, 6, 6, 6]
    assert reference_sizes(22, 8, 4) == [4] * 8


CASES = [(22, s, m) for s in range(2, 9) for m in (0, 3, 6, 11)] + [(5, 8, 2), (5, 1, 0), (5, 3, 0)]


@pytest.mark.parametrize(("blocks", "workers", "min_depth"), CASES)
def test_dealing_follows_the_released_rule(blocks, workers, min_depth):
    sizes = reference_sizes(blocks, workers, min_depth)
    for r in range(20):
        chunks = deal(blocks, workers, min_depth, seeded_generator(0, r))
        assert chunks == reference_deal(blocks, workers, min_depth, seeded_generator(0, r))
        assert [len(c) for c in chunks] == sizes  # the released sizes, leftovers first
        assert all(len(c) == len(set(c)) for c in chunks)  # no block twice in one sub-ResNet
        dealt = [b for c in chunks for b in c]
        assert set(dealt) == set(range(blocks))  # every block is trained every round
        if sum(sizes) == blocks:
            assert len(dealt) == blocks  # disjoint sub-ResNets when nothing forces sharing
        assert chunks == deal(blocks, workers, min_depth, seeded_generator(0, r))  # all ranks
    rounds = {str(deal(blocks, workers, min_depth, seeded_generator(0, r))) for r in range(20)}
    if workers > 1:
        assert len(rounds) > 1  # a new partition each round


def test_owners_inverts_the_partition():
    assert owners([[0, 2], [2, 3]], 5) == [[0], [], [0, 1], [1], []]


def _info(model, seed=0):
    return problem(model, seed=seed)


def _model():
    torch.manual_seed(0)
    return preact_resnet(34, 10, in_channels=1, width=1 / 16)  # stage 3: 6 blocks, P = 5


def _aggregate_by_hand(rank, comm, min_depth):
    model = _model()
    proto = protocols.build(protocols.parse_config({"name": "resist", "min_depth": min_depth}))
    set_up(proto, model, comm)
    proto.begin_round(0)
    for t in [p.data for p in model.parameters()]:
        t.fill_(rank + 1.0)  # hand-made values: everything this rank holds is rank + 1
    proto.end_round(0, proto.work)
    mine_next = proto.partition(1)[rank]
    values_next = {b: proto.blocks[b].conv1.weight.flatten()[0].item() for b in mine_next}
    shared = model.stem.weight.flatten()[0].item()
    paper = comm.bytes_paper
    proto.gather_for_eval()
    full = [b.conv1.weight.unique().tolist() for b in proto.blocks]
    return {
        "held": proto.partition(0),
        "next": values_next,
        "shared": shared,
        "full": full,
        "paper": paper,
        "block_bytes": proto.block_bytes,
        "shared_bytes": sum(t.numel() * 4 for t in proto.shared),
    }


@pytest.mark.parametrize(("workers", "min_depth"), [(3, 0), (3, 3), (4, 2)])
def test_aggregation_math_on_hand_made_tensors(tmp_path, workers, min_depth):
    results = run_ranks(_aggregate_by_hand, workers, tmp_path, min_depth)
    assert all(r["held"] == results[0]["held"] for r in results)  # same partition on every rank
    held = owners(results[0]["held"], 5)
    expected = [
        sum(k + 1.0 for k in ranks) / len(ranks) if ranks else 1.0  # unheld: unchanged (rank 0)
        for ranks in held
    ]
    for rank, res in enumerate(results):
        assert res["shared"] == pytest.approx(sum(range(1, workers + 1)) / workers)
        for b, value in res["next"].items():  # next round's owners got the aggregate
            assert value == pytest.approx(expected[b]), (rank, b)
    # Over all ranks, per round: the shared layers up and down from every rank, and every
    # block copy handed back to its reducer and then out to next round's holder (Comm
    # counts each transfer once, at its sender; a holder's own copy too).
    copies = sum(reference_sizes(5, workers, min_depth))
    shared, block = results[0]["shared_bytes"], results[0]["block_bytes"]
    assert sum(r["paper"] for r in results) == 2 * workers * shared + 2 * copies * block
    assert [f[0] for f in results[0]["full"]] == pytest.approx(expected)  # rank 0 after gather
    assert all(len(f) == 1 for f in results[0]["full"])


def test_test_time_scaling():
    """The released code's rule, max(1/S, m/P) (P = 5 here), also for unequal shares."""
    for workers, min_depth in [(2, 0), (3, 0), (4, 0), (8, 4), (4, 3), (4, 1), (2, 3)]:
        scale = max(1 / workers, min_depth / 5)
        model = _model()
        proto = ResIST(ResIST.Config(min_depth=min_depth))
        comm = type("C", (), {"world_size": workers, "rank": 0})()
        set_up(proto, model, comm)  # type: ignore[arg-type]
        proto.begin_round(0)
        assert all(b.residual_scale == 1.0 for b in proto.blocks)  # 1.0 while training
        evaluated = proto.eval_model()
        assert all(b.active and b.residual_scale == pytest.approx(scale) for b in proto.blocks)
        shared = [b for b in evaluated.blocks() if b not in proto.blocks]
        assert all(b.active and b.residual_scale == 1.0 for b in shared)


def hand_update(t, rank, r):
    """What a worker's 'training' does to a tensor it holds in round r (nonlinear in the
    value, different per rank and round, so any mix-up of blocks or rounds shows)."""
    return t * (1 + 0.01 * (rank + 1)) + 0.1 * (rank + 1) * (r + 1)


def _rounds_by_hand(rank, comm, min_depth, rounds):
    model = _model()
    proto = protocols.build(protocols.parse_config({"name": "resist", "min_depth": min_depth}))
    set_up(proto, model, comm)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    partitions = []
    for r in range(rounds):
        proto.begin_round(r)
        mine = set(proto.partition(r)[rank])
        partitions.append(proto.partition(r))
        with torch.no_grad():
            for p in model.parameters():
                block = proto.block_of.get(id(p), -1)
                if block == -1 or block in mine:  # shared, or a block this worker holds
                    p.copy_(hand_update(p, rank, r))
        proto.end_round(r, proto.work)
    proto.gather_for_eval()
    return {"start": start, "partitions": partitions, "state": model.state_dict()}


@pytest.mark.parametrize(("workers", "min_depth"), [(2, 0), (3, 0), (4, 0), (2, 3), (3, 2), (4, 2)])
def test_aggregation_over_rounds_equals_a_centralised_reference(tmp_path, workers, min_depth):
    """Five rounds on real gloo ranks (P = 5: unequal shares at S = 2, 3, 4; shared blocks
    with a minimum depth) against the algorithm run centrally here: every worker updates
    its sub-ResNet, shared tensors are averaged over all S, each block over its holders."""
    rounds = 5
    results = run_ranks(_rounds_by_hand, workers, tmp_path, min_depth, rounds)
    model = _model()
    model.load_state_dict(results[0]["start"])
    names = dict(model.named_parameters())
    blocks = model.partitionable_blocks()
    block_of = {
        f"stages.2.{i + 1}.{n}": i for i, b in enumerate(blocks) for n, _ in b.named_parameters()
    }
    state = {n: p.detach().clone() for n, p in names.items()}
    for r in range(rounds):
        chunks = reference_deal(5, workers, min_depth, seeded_generator(0, 0x5E157, r))
        assert all(res["partitions"][r] == chunks for res in results)  # one partition
        new = {}
        for n, value in state.items():
            b = block_of.get(n)
            holders = range(workers) if b is None else [k for k in range(workers) if b in chunks[k]]
            new[n] = torch.stack([hand_update(value, k, r) for k in holders]).mean(0)
        state = new
    got = results[0]["state"]  # rank 0, after gathering the whole model
    for n, value in state.items():
        assert torch.allclose(got[n], value, atol=1e-5), n


def test_supports_refuses_impossible_settings():
    cfg = ResIST.Config()
    flat = PreActResNet((2, 2, 1, 2), width=1 / 16)  # a stage 3 of one (strided) block
    assert "no partitionable blocks" in ResIST.supports(cfg, _info(flat), 2)
    resnet18 = preact_resnet(18, 10, width=1 / 16)  # P = 1
    assert "only 1 partitionable blocks" in ResIST.supports(cfg, _info(resnet18), 2)
    assert "set protocol.min_depth (1..5)" in ResIST.supports(cfg, _info(_model()), 8)
    assert ResIST.supports(ResIST.Config(min_depth=2), _info(_model()), 8) is None
    assert "min_depth must be in 0..5" in ResIST.supports(
        ResIST.Config(min_depth=6), _info(_model()), 2
    )
    assert ResIST.supports(cfg, _info(preact_resnet(101, 10, width=1 / 16)), 8) is None


def _bytes_formula(cfg, summary, workers, min_depth):
    model = preact_resnet(cfg.model.depth, 10, 1, cfg.model.width, cfg.model.bn)
    blocks = model.partitionable_blocks()
    block = sum(p.numel() for p in blocks[0].parameters()) * 4
    shared = sum(p.numel() for p in model.parameters()) * 4 - len(blocks) * block
    copies = sum(reference_sizes(len(blocks), workers, min_depth))
    return summary["rounds"] * (2 * workers * shared + 2 * copies * block)


@pytest.mark.parametrize(("workers", "min_depth"), [(2, 0), (4, 3)])
def test_recorded_bytes_equal_the_paper_formula(tmp_path, workers, min_depth):
    cfg = tiny_config(
        "resist",
        workers=workers,
        results_dir=str(tmp_path),
        model={"depth": 34},
        protocol_kw={"local_steps": 3, "min_depth": min_depth},
    )
    summary = execute(cfg)
    assert summary["status"] == "completed" and summary["rounds"] >= 2
    assert summary["bytes"] == _bytes_formula(cfg, summary, workers, min_depth)
    assert summary["bytes_moved"] > 0


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
@pytest.mark.parametrize("workers", [2, 4])
def test_real_runs_learn_and_stay_close_to_localsgd(tmp_path, workers):
    """The default model and budget on digits (chance: 10 %), same l for both protocols."""
    acc = {}
    for name in ("resist", "localsgd"):
        cfg = dataclasses.replace(
            RunConfig(protocol=protocols.parse_config({"name": name, "local_steps": 10})),
            workers=workers,
            results_dir=str(tmp_path),
            launcher=LaunchConfig(device="cpu", progress=False),
        )
        summary = execute(cfg)
        assert summary["status"] == "completed", summary
        acc[name] = summary["final_test_acc"]
    assert acc["resist"] > 0.8
    assert acc["resist"] >= acc["localsgd"] - 0.05, acc


def test_warmup_is_local_sgd_on_the_full_model(tmp_path):
    common = {"model": {"depth": 34}, "train": {"data_epochs": 0.3, "eval_every": 0.3}}
    warm = tiny_config("resist", protocol_kw={"local_steps": 3, "warmup_epochs": 10.0}, **common)
    local = tiny_config(
        "localsgd", protocol_kw={"local_steps": 3, "optimizer_state": "reset"}, **common
    )
    a = run_ranks(train_rank, 2, tmp_path, warm)[0]
    b = run_ranks(train_rank, 2, tmp_path, local)[0]
    assert a["summary"]["bytes"] == b["summary"]["bytes"] > 0
    for key in a["state"]:
        assert torch.allclose(a["state"][key], b["state"][key], atol=1e-5), key
