"""IST: neuron partitions, extraction and write-back on real ranks, sync modes, learning."""

import dataclasses

import numpy as np
import pytest
import torch
from helpers import problem, run_ranks, set_up, tiny_config, train_rank

import protocols
from protocols.ist import IST, partition_neurons
from suite.architectures import MLPConfig
from suite.data import load_dataset
from suite.data.audio import SPEECH_WORDS, speech_split
from suite.datasources import data_config
from suite.dist import Comm
from suite.launch import execute
from suite.models.mlp import MLP
from suite.seeding import seeded_generator
from suite.train import train

CPU = torch.device("cpu")


def mlp_config(protocol="ist", workers=2, **kw):
    model = kw.pop("model", {})
    return tiny_config(
        protocol,
        workers=workers,
        model={"name": "mlp", "hidden": 64, "layers": 3, **model},
        **kw,
    )


def reference_groups(widths, workers, gen, stratified):
    """Both released rules written out here (BinhangYuan/IST_Release), with this suite's
    RNG draws: centralised, one permutation of a layer cut into S; decentralised, server
    k's slice [k·H/S, (k+1)·H/S) permuted and cut into S pieces, worker j taking piece j
    of every server."""
    out = []
    for width in widths:
        if not stratified:
            perm = torch.randperm(width, generator=gen).tolist()
            size = width // workers
            out.append([sorted(perm[k * size : (k + 1) * size]) for k in range(workers)])
            continue
        served, piece = width // workers, width // workers**2
        slices = [
            [k * served + i for i in torch.randperm(served, generator=gen).tolist()]
            for k in range(workers)
        ]
        out.append(
            [
                sorted(n for s in slices for n in s[j * piece : (j + 1) * piece])
                for j in range(workers)
            ]
        )
    return out


@pytest.mark.parametrize("stratified", [False, True])
@pytest.mark.parametrize(("widths", "workers"), [([8], 2), ([16, 16], 4), ([18, 36, 9], 3)])
def test_partition_properties(widths, workers, stratified):
    for r in range(10):
        groups = partition_neurons(widths, workers, seeded_generator(0, r), stratified)
        expected = reference_groups(widths, workers, seeded_generator(0, r), stratified)
        assert [[g.tolist() for g in layer] for layer in groups] == expected
        for layer, width in enumerate(widths):
            g = groups[layer]
            assert all(len(x) == width // workers for x in g)  # equal sizes
            flat = torch.cat(g).tolist()
            assert sorted(flat) == list(range(width))  # disjoint and complete
            if stratified:  # exactly H/S² neurons of every server's slice for every worker
                served = width // workers
                for x in g:
                    per_server = torch.bincount(x // served, minlength=workers)
                    assert per_server.tolist() == [width // workers**2] * workers
    first = partition_neurons(widths, workers, seeded_generator(0, 0), stratified)
    other = partition_neurons(widths, workers, seeded_generator(0, 1), stratified)
    assert any(not torch.equal(a, b) for a, b in zip(first[0], other[0], strict=True))


def test_global_partitions_do_not_stratify():
    """The centralised rule draws from the whole layer: some worker gets an unequal number
    of neurons from the S slices in some round (the difference the option exists for)."""
    unequal = 0
    for r in range(20):
        (g,) = partition_neurons([16], 4, seeded_generator(0, r))
        unequal += any(torch.bincount(x // 4, minlength=4).tolist() != [1] * 4 for x in g)
    assert unequal > 0


def hand_update(t, rank, r):
    return t * (1 + 0.01 * (rank + 1)) + 0.1 * (rank + 1) * (r + 1)


def _ist_rounds(rank, comm, sync, partition, rounds):
    from protocols.base import float_state

    torch.manual_seed(0)
    model = MLP(5, 16, 3, 4, "plain")  # biases and running statistics too
    cfg = {"name": "ist", "sync": sync, "partition": partition, "local_steps": 1}
    proto = protocols.build(protocols.parse_config(cfg))
    set_up(proto, model, comm, problem(model, batch_size=4, num_train=100))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for r in range(rounds):
        work = proto.begin_round(r)
        with torch.no_grad():
            for t in float_state(work.module):
                t.copy_(hand_update(t, rank, r))
        proto.end_round(r, work)
    proto.gather_for_eval()
    return {"start": start, "state": model.state_dict()}


@pytest.mark.parametrize(
    ("sync", "partition", "workers"),
    [
        ("centralized", "auto", 2),
        ("centralized", "auto", 4),
        ("decentralized", "auto", 2),
        ("decentralized", "auto", 4),
        ("decentralized", "global", 4),
        ("centralized", "stratified", 4),
    ],
)
def test_aggregation_over_rounds_equals_a_centralised_reference(tmp_path, sync, partition, workers):
    """Five rounds on real gloo ranks against the algorithm run centrally here: worker k's
    subnet (its rows, its [group, previous group] blocks, its output columns, its BN
    entries) is updated and written back; cross-group weights stay; the output bias is
    averaged over the workers."""
    rounds = 5
    results = run_ranks(_ist_rounds, workers, tmp_path, sync, partition, rounds)
    stratified = partition == "stratified" or (partition == "auto" and sync == "decentralized")
    full = {k: v.clone() for k, v in results[0]["start"].items()}
    for r in range(rounds):
        g = reference_groups([16, 16], workers, seeded_generator(0, 0x157, r), stratified)
        new = {k: v.clone() for k, v in full.items()}
        for k in range(workers):
            rows0, rows1 = torch.tensor(g[0][k]), torch.tensor(g[1][k])
            for layer, rows in ((0, rows0), (1, rows1)):
                for name in ("bias", "weight"):
                    key = f"hidden.{layer}.{name}"
                    if name == "weight" and layer == 1:  # only its block of a middle layer
                        block = full[key][rows[:, None], rows0[None, :]]
                        new[key][rows[:, None], rows0[None, :]] = hand_update(block, k, r)
                    else:
                        new[key][rows] = hand_update(full[key][rows], k, r)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    key = f"norms.{layer}.{name}"
                    new[key][rows] = hand_update(full[key][rows], k, r)
            new["out.weight"][:, rows1] = hand_update(full["out.weight"][:, rows1], k, r)
        new["out.bias"] = torch.stack(
            [hand_update(full["out.bias"], k, r) for k in range(workers)]
        ).mean(0)
        full = new
    got = results[0]["state"]  # rank 0 holds the whole model (after gathering)
    for key, value in full.items():
        if value.is_floating_point():
            assert torch.allclose(got[key], value, atol=1e-5), key


def _extract_and_write_back(rank, comm, sync):
    torch.manual_seed(0)
    model = MLP(5, 8, 3, 4, "plain")  # biases and running stats too
    proto = protocols.build(protocols.parse_config({"name": "ist", "sync": sync}))
    set_up(proto, model, comm, problem(model, batch_size=4, num_train=100))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    work = proto.begin_round(0)
    g = proto.groups
    sub = dict(work.module.named_parameters())
    extracted = {
        "hidden.0.weight": torch.equal(
            sub["hidden.0.weight"], before["hidden.0.weight"][g[0][rank]]
        ),
        "hidden.1.weight": torch.equal(
            sub["hidden.1.weight"], before["hidden.1.weight"][g[1][rank]][:, g[0][rank]]
        ),
        "out.weight": torch.equal(sub["out.weight"], before["out.weight"][:, g[1][rank]]),
        "norms.0.weight": torch.equal(sub["norms.0.weight"], before["norms.0.weight"][g[0][rank]]),
    }
    with torch.no_grad():  # "train": every subnet entry becomes 100 + rank
        for p in work.module.parameters():
            p.fill_(100.0 + rank)
    proto.end_round(0, work)
    proto.gather_for_eval()
    return extracted, before, model.state_dict(), [[x.tolist() for x in layer] for layer in g]


@pytest.mark.parametrize("sync", ["centralized", "decentralized"])
def test_extraction_and_write_back(tmp_path, sync):
    results = run_ranks(_extract_and_write_back, 2, tmp_path, sync)
    for extracted, *_ in results:
        assert all(extracted.values()), extracted
    _, before, after, groups = results[0]
    assert groups == results[1][3]  # the same partition on both ranks
    g0, g1 = groups
    owner0 = {n: k for k in range(2) for n in g0[k]}
    owner1 = {n: k for k in range(2) for n in g1[k]}
    w1 = after["hidden.1.weight"]
    for i in range(8):
        for j in range(8):
            if owner1[i] == owner0[j]:  # trained by worker owner1[i]
                assert w1[i, j] == 100 + owner1[i]
            else:  # cross-group: untouched
                assert w1[i, j] == before["hidden.1.weight"][i, j]
    for i in range(8):
        assert (after["hidden.0.weight"][i] == 100 + owner0[i]).all()
        assert after["hidden.0.bias"][i] == 100 + owner0[i]
        assert (after["out.weight"][:, i] == 100 + owner1[i]).all()
    assert torch.allclose(after["out.bias"], torch.full((4,), 100.5))  # shared: averaged


def test_one_worker_is_plain_training():
    sgd = {"momentum": 0.0}  # IST builds a fresh optimizer each round, as the code (plain SGD)
    ist = train(mlp_config("ist", 1, optim=sgd), Comm(0, 1, CPU), CPU)
    ref = train(mlp_config("single", 1, optim=sgd), Comm(0, 1, CPU), CPU)
    assert ist.summary["bytes"] == 0
    for a, b in zip(ist.model.state_dict().values(), ref.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_both_sync_modes_give_identical_results(tmp_path):
    runs = {}
    for sync in ("centralized", "decentralized"):  # the same partition rule for both
        kw = {"local_steps": 3, "sync": sync, "partition": "stratified"}
        cfg = mlp_config("ist", 2, protocol_kw=kw)
        runs[sync] = run_ranks(train_rank, 2, tmp_path, cfg)[0]
    a, b = runs["centralized"], runs["decentralized"]
    assert a["summary"]["bytes"] == b["summary"]["bytes"]  # the paper convention: same
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key


@pytest.mark.parametrize("workers", [2, 4])
def test_real_runs_learn_and_record_the_formula(tmp_path, workers):
    cfg = mlp_config(
        "ist",
        workers,
        results_dir=str(tmp_path),
        model={"hidden": 256, "layers": 2},
        protocol_kw={"local_steps": 5, "sync": "decentralized"},
        train={"data_epochs": 8, "eval_every": 2},
        optim={"momentum": 0.0, "lr": 0.1, "weight_decay": 0.0},
    )
    summary = execute(cfg)
    assert summary["status"] == "completed" and summary["final_test_acc"] > 0.8, summary
    model = MLP(64, 256, 2, 10, "ist")
    per_round = IST.paper_bytes_per_round(cfg.protocol, problem(model), workers)
    assert summary["bytes"] == summary["rounds"] * per_round
    # each worker gets 1/S of the first and last layers' weights and of its BN entries
    h = 256 // workers
    assert per_round == 2 * workers * 4 * (64 * h + 2 * h + 10 * h)


def test_supports_refuses():
    from suite.models.resnet import preact_resnet

    cfg = IST.Config()

    def info(m):
        return problem(m, batch_size=4, num_train=100)

    assert "use model=mlp" in IST.supports(cfg, info(preact_resnet(18, 10, width=1 / 16)), 2)
    assert "does not split into 3 equal groups" in IST.supports(cfg, info(MLP(4, 64, 2, 3)), 3)
    assert IST.supports(cfg, info(MLP(4, 64, 2, 3)), 4) is None
    decentral = IST.Config(sync="decentralized")  # stratified: H/S² neurons per server
    narrow = info(MLP(4, 8, 2, 3))
    assert "does not split into 4² equal pieces" in IST.supports(decentral, narrow, 4)
    anyhow = IST.Config(sync="decentralized", partition="global")
    assert IST.supports(anyhow, narrow, 4) is None


def _write_idx(path, array):
    import gzip
    import struct

    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_format(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28))
    labels = rng.integers(0, 10, 20)
    for prefix, n in (("train", 20), ("t10k", 6)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images[:n])
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels[:n])
    ds = load_dataset(data_config(name="mnist", root=str(tmp_path)))
    assert ds.train_x.shape == (20, 1, 28, 28) and ds.test_x.shape == (6, 1, 28, 28)
    assert torch.equal(ds.train_x[3, 0], torch.from_numpy(images[3]).to(torch.uint8))
    assert ds.test_y.tolist() == labels[:6].tolist()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(Exception, match="mnist not found or corrupted"):
        load_dataset(data_config(name="mnist", root=str(tmp_path)))


def test_speech_commands_from_wav_files(tmp_path):
    from scipy.io import wavfile

    rng = np.random.default_rng(0)
    names = []
    for w, word in enumerate(SPEECH_WORDS[:3]):
        (tmp_path / word).mkdir()
        for speaker in range(6):
            name = f"{speaker:08x}_nohash_{w}.wav"
            length = 16000 if speaker % 2 else 12000  # short clips are zero-padded
            tone = np.sin(np.arange(length) / 16000 * 2 * np.pi * (300 + 400 * w))
            noise = rng.normal(0, 0.05, length)
            wavfile.write(tmp_path / word / name, 16000, ((tone + noise) * 8000).astype(np.int16))
            names.append((name, w))
    ds = load_dataset(data_config(name="speech", root=str(tmp_path)))
    order = sorted(names, key=lambda t: (SPEECH_WORDS[t[1]], t[0]))
    expected_test = [w for n, w in order if speech_split(n) == "test"]
    assert ds.train_x.shape[1:] == (1, 128, 32) and ds.num_classes == 35
    assert ds.train_x.shape[0] + ds.test_x.shape[0] == 18
    assert ds.test_y.tolist() == expected_test
    assert float(ds.train_x.max()) == 0.0 and float(ds.train_x.min()) >= -80.0  # dB re max
    cache = list((tmp_path / ".commbench-cache").glob("speech-*.pt"))
    assert len(cache) == 1
    again = load_dataset(data_config(name="speech", root=str(tmp_path)))  # from the cache
    assert torch.equal(again.train_x, ds.train_x)
    # The same speaker is always on the same side of the split.
    assert speech_split("abc_nohash_0.wav") == speech_split("abc_nohash_7.wav")


def test_mlp_models():
    ist = MLP(64, 32, 3, 10, "ist")
    assert all(layer.bias is None for layer in ist.hidden) and ist.out.bias is None
    assert ist.out_norm is not None and not ist.out_norm.affine
    out = ist(torch.randn(8, 1, 8, 8))
    assert torch.allclose(out.exp().sum(1), torch.ones(8), atol=1e-5)  # log-probabilities
    plain = MLP(64, 32, 2, 10, "plain")
    assert plain.norms[0].track_running_stats and plain.out.bias is not None
    with pytest.raises(ValueError, match="variant"):
        MLP(4, 4, 2, 2, "wide")


def test_mlp_config_runs_under_every_full_model_protocol():
    for name in ("ddp", "localsgd", "single"):
        cfg = dataclasses.replace(mlp_config(name, 1), model=MLPConfig(hidden=32))
        assert train(cfg, Comm(0, 1, CPU), CPU).summary["steps"] > 0
