import pickle

import numpy as np
import pytest
import scipy.io
import torch

from suite.config import ConfigError
from suite.data import TrainBatches, augment, eval_batches, load_dataset
from suite.data.datasets import torchvision_datasets
from suite.datasources import data_config

CPU = torch.device("cpu")


def test_digits_is_real_and_split_fixed():
    ds = load_dataset(data_config())
    assert ds.train_x.shape == (1437, 1, 8, 8) and ds.test_x.shape == (360, 1, 8, 8)
    assert ds.num_classes == 10 and not ds.synthetic
    assert int(ds.train_x.max()) == 16  # the UCI digits are 0..16 intensities
    again = load_dataset(data_config())
    assert torch.equal(ds.test_y, again.test_y)
    assert set(ds.train_y.tolist()) == set(range(10))


def test_digits_are_scikit_learns_without_importing_it():
    """The reader takes scikit-learn's file directly (its import costs 2.3 s per command
    line); the images and labels are load_digits' own, in its order, in a fresh process
    that never imports sklearn."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from suite.data.datasets import read_digits

    bunch = load_digits()
    ds = read_digits()
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)
    assert torch.equal(ds.train_x, images[order[:1437]])
    assert torch.equal(ds.test_x, images[order[1437:]])
    assert torch.equal(ds.test_y, torch.from_numpy(bunch.target)[order[1437:]])
    probe = "import sys; from suite.data.datasets import read_digits as r; r(); "
    probe += "print(sorted(m for m in sys.modules if m.startswith('sklearn')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def _write_cifar(root, name, n_train, n_test, classes):
    rng = np.random.default_rng(0)
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    key = "labels" if name == "cifar10" else "fine_labels"

    def dump(path, n):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, n).tolist()
        with open(path, "wb") as f:
            pickle.dump({"data": data, key: labels, "coarse_labels": labels}, f)
        return data, labels

    if name == "cifar10":
        parts = [dump(folder / f"data_batch_{i}", n_train // 5) for i in range(1, 6)]
        test = dump(folder / "test_batch", n_test)
        meta = {"label_names": [f"c{i}" for i in range(10)]}
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump(meta, f)
    else:
        parts = [dump(folder / "train", n_train)]
        test = dump(folder / "test", n_test)
        with open(folder / "meta", "wb") as f:
            pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    return parts, test


@pytest.fixture
def no_md5(monkeypatch):
    tv = torchvision_datasets()
    # Fixture files are format-true but not the real archives, so their md5 differs.
    monkeypatch.setattr(tv.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv.cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tv.SVHN, "_check_integrity", lambda self: True)


@pytest.mark.parametrize(("name", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_cifar_reads_the_official_pickle_format(tmp_path, no_md5, name, classes):
    parts, (test_data, test_labels) = _write_cifar(tmp_path, name, 50, 7, classes)
    ds = load_dataset(data_config(name=name, root=str(tmp_path)))
    assert ds.train_x.shape == (50, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (7, 3, 32, 32) and ds.num_classes == classes
    # Row-major 3072 = 3 planes of 32x32: pixel (c, h, w) sits at c*1024 + h*32 + w.
    assert int(ds.test_x[2, 1, 3, 4]) == int(test_data[2, 1024 + 3 * 32 + 4])
    assert ds.test_y.tolist() == test_labels
    assert ds.train_y[:10].tolist() == parts[0][1][:10]


def test_svhn_reads_the_official_mat_format(tmp_path, no_md5):
    rng = np.random.default_rng(1)
    for split, n in (("train", 12), ("test", 5)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # SVHN stores digit 0 as label 10
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        if split == "test":
            expect_x, expect_y = x, y
    ds = load_dataset(data_config(name="svhn", root=str(tmp_path)))
    assert ds.train_x.shape == (12, 3, 32, 32) and ds.test_x.shape == (5, 3, 32, 32)
    assert int(ds.test_x[3, 2, 5, 6]) == int(expect_x[5, 6, 2, 3])
    assert ds.test_y.tolist() == [int(v) % 10 for v in expect_y[:, 0]]


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_missing_data_set_is_a_clear_error(tmp_path, name):
    with pytest.raises(ConfigError, match=rf"{name} not found or corrupted under"):
        load_dataset(data_config(name=name, root=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match=r"set data\.root"):
        load_dataset(data_config(name=name))


def test_corrupt_file_is_a_clear_error(tmp_path, no_md5):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
        "batches.meta",
    ]:
        (folder / f).write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="cifar10 not found or corrupted"):
        load_dataset(data_config(name="cifar10", root=str(tmp_path)))


def test_a_truncated_cifar_file_is_named(tmp_path, no_md5):
    _write_cifar(tmp_path, "cifar10", 50, 7, 10)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])  # a download cut short
    with pytest.raises(ConfigError) as err:
        load_dataset(data_config(name="cifar10", root=str(tmp_path)))
    assert f"{batch} is truncated or not a CIFAR pickle (UnpicklingError" in str(err.value)


def test_unknown_data_set_names_valid_choices():
    with pytest.raises(
        ConfigError,
        match=r"unknown data set 'imagenet'; valid: cifar10, cifar100, digits, fashion_mnist, "
        r"mnist, speech, svhn, synthetic",
    ):
        data_config(name="imagenet")


def test_synthetic_any_shape():
    ds = load_dataset(
        data_config(
            name="synthetic", num_train=64, num_test=8, image_size=16, channels=5, num_classes=3
        )
    )
    assert ds.synthetic and ds.train_x.shape == (64, 5, 16, 16) and ds.num_classes == 3


def _epoch_indices(ds, rank, world, sharding, seed=0, batch=8):
    b = TrainBatches(ds, rank, world, batch, sharding, seed, CPU, augment=False)
    return b._order.tolist(), b


@pytest.mark.parametrize("world", [2, 3, 4])
def test_disjoint_sharding_partitions_each_epoch(world):
    ds = load_dataset(data_config())
    shards = [_epoch_indices(ds, r, world, "disjoint")[0] for r in range(world)]
    n = ds.num_train
    pad = (-n) % world
    assert all(len(s) == (n + pad) // world for s in shards)
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(n)) and len(flat) == n + pad
    assert len(set(shards[0]) & set(shards[1])) <= pad


def test_full_sharding_gives_every_worker_its_own_pass_over_everything():
    ds = load_dataset(data_config())
    a, _ = _epoch_indices(ds, 0, 4, "full")
    b, _ = _epoch_indices(ds, 1, 4, "full")
    assert sorted(a) == sorted(b) == list(range(ds.num_train)) and a != b


def test_batches_are_deterministic_for_a_seed_and_differ_across_seeds():
    ds = load_dataset(data_config())
    first = next(next(TrainBatches(ds, 1, 2, 16, "disjoint", 3, CPU)) for _ in range(1))
    again = next(TrainBatches(ds, 1, 2, 16, "disjoint", 3, CPU))
    other = next(TrainBatches(ds, 1, 2, 16, "disjoint", 4, CPU))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def test_epochs_roll_over_and_state_resumes_exactly():
    ds = load_dataset(data_config())
    stream = TrainBatches(ds, 0, 2, 100, "disjoint", 0, CPU)
    per_epoch = stream.batches_per_epoch()
    assert per_epoch == 719 // 100
    for _ in range(per_epoch + 2):
        next(stream)
    assert stream.epoch == 1
    state = stream.state_dict()
    expected = [next(stream) for _ in range(3)]
    resumed = TrainBatches(ds, 0, 2, 100, "disjoint", 0, CPU)
    resumed.load_state_dict(state)
    for (x, y), (ex, ey) in zip((next(resumed) for _ in range(3)), expected, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_augment_crops_within_padding_and_flips_exactly():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    out = augment(x, padding=1, flip=False, gen=gen)
    assert out.shape == x.shape
    for i in range(2):  # every crop is a shifted window of the zero-padded image
        padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1))
        windows = [padded[:, a : a + 4, b : b + 4] for a in range(3) for b in range(3)]
        assert any(torch.equal(out[i], w) for w in windows)
    flipped = [augment(x, 0, True, torch.Generator().manual_seed(s)) for s in range(20)]
    for f in flipped:
        for i in range(2):
            assert torch.equal(f[i], x[i]) or torch.equal(f[i], x[i].flip(-1))
    assert any(not torch.equal(f, x) for f in flipped)


def test_eval_batches_cover_the_test_set_in_order():
    ds = load_dataset(data_config())
    batches = eval_batches(ds, 100, CPU)
    assert [len(y) for _, y in batches] == [100, 100, 100, 60]
    assert torch.equal(torch.cat([y for _, y in batches]), ds.test_y)
