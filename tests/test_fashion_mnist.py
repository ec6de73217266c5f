"""data=fashion_mnist: the real IDX format (files written here), its own name, its
stated normalisation and augmentation, the missing-files error, and data.downsample."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from suite.config import ConfigError
from suite.data import datasets, load_dataset
from suite.data.loader import AUG_STREAM, FULL_ORDER_STREAM, TrainBatches
from suite.datasources import data_config
from suite.seeding import seeded_generator

REPO = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    """One IDX file as Zalando ships it: gzip, magic 0x0000 08 ndim, big-endian sizes."""
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fashion_files(root: Path, n_train: int = 64, n_test: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_train + n_test, 28, 28))
    labels = np.arange(n_train + n_test) % 10
    write_idx(root / "train-images-idx3-ubyte.gz", images[:n_train])
    write_idx(root / "train-labels-idx1-ubyte.gz", labels[:n_train])
    write_idx(root / "t10k-images-idx3-ubyte.gz", images[n_train:])
    write_idx(root / "t10k-labels-idx1-ubyte.gz", labels[n_train:])
    return images


def test_reads_the_idx_files_under_its_own_name(tmp_path):
    images = fashion_files(tmp_path)
    ds = load_dataset(data_config(name="fashion_mnist", root=str(tmp_path)))
    assert ds.name == "fashion_mnist" and ds.num_classes == 10
    assert ds.train_x.shape == (64, 1, 28, 28) and ds.test_x.shape == (16, 1, 28, 28)
    assert torch.equal(ds.test_x[5, 0], torch.from_numpy(images[69]).to(torch.uint8))
    # The stated normalisation (the real training set's pixel mean and std), not the
    # statistics of whatever files were read; flips and a 2-pixel crop for clothing.
    assert (ds.mean, ds.std, ds.scale) == ((0.2860,), (0.3530,), 255.0)
    assert ds.flip and ds.crop_padding == 2


def test_default_root_is_debians_and_missing_files_name_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_ROOT", str(tmp_path / "absent"))
    with pytest.raises(ConfigError) as err:
        load_dataset(data_config(name="fashion_mnist"))
    text = str(err.value)
    assert "\n" not in text
    assert "apt-get install dataset-fashion-mnist" in text and "data.root=" in text
    fashion_files(tmp_path)
    monkeypatch.setattr(datasets, "FASHION_MNIST_ROOT", str(tmp_path))
    assert load_dataset(data_config(name="fashion_mnist")).num_train == 64


def test_a_truncated_file_is_named(tmp_path):
    fashion_files(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(ConfigError, match=r"t10k-images-idx3-ubyte\.gz"):
        load_dataset(data_config(name="fashion_mnist", root=str(tmp_path)))


def test_downsample_averages_pixel_squares(tmp_path):
    images = fashion_files(tmp_path)
    ds = load_dataset(data_config(name="fashion_mnist", root=str(tmp_path), downsample=2))
    assert ds.train_x.shape == (64, 1, 14, 14) and ds.train_x.dtype == torch.uint8
    square = images[0, 2:4, 6:8].astype(np.float64)  # output pixel (1, 3)
    assert int(ds.train_x[0, 0, 1, 3]) == int(np.round(square.mean()))
    assert ds.crop_padding == 1
    with pytest.raises(ConfigError, match="does not divide"):
        load_dataset(data_config(name="fashion_mnist", root=str(tmp_path), downsample=3))


def test_downsample_at_one_keeps_every_run_name():
    import protocols
    from suite.config import RunConfig

    plain = RunConfig(protocol=protocols.parse_config({"name": "ddp"}))
    assert "downsample" not in plain.semantic_dict()["data"]
    assert plain.run_name() == "digits-preact_resnet101-ddp-w2-s0-" + plain.run_name()[-10:]


def test_augmentation_and_epoch_orders_draw_separate_streams():
    # A generator is its seed: the augmentation's must differ from every epoch order's,
    # for both shardings, over many seeds, ranks and epochs.
    for seed in range(4):
        for rank in range(8):
            aug = seeded_generator(seed, rank, AUG_STREAM).initial_seed()
            full = {
                seeded_generator(seed, rank, e, FULL_ORDER_STREAM).initial_seed()
                for e in range(2000)
            }
            disjoint = {seeded_generator(seed, e).initial_seed() for e in range(2000)}
            assert aug not in full | disjoint
    # And the loader uses them: under sharding=full, epoch 7's order is not drawn from
    # the augmentation's stream.
    ds = load_dataset(data_config(name="digits"))
    b = TrainBatches(ds, 0, 2, 32, "full", 0, torch.device("cpu"))
    b.epoch = 7
    same_stream = torch.randperm(ds.num_train, generator=seeded_generator(0, 0, AUG_STREAM))
    assert not torch.equal(b._epoch_order(), same_stream)


@pytest.mark.parametrize("protocol", ["ist"])
def test_a_real_run_on_the_files_is_named_fashion_mnist(tmp_path, protocol):
    root, results = tmp_path / "data", tmp_path / "results"
    root.mkdir()
    fashion_files(root, n_train=256, n_test=64)
    cmd = [
        sys.executable,
        "-m",
        "suite.run",
        f"protocol={protocol}",
        "data=fashion_mnist",
        f"data.root={root}",
        "data.batch_size=16",
        "model.hidden=32",
        "train.data_epochs=1",
        f"results_dir={results}",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (folder,) = [p for p in results.iterdir() if not p.name.startswith(("_", "."))]
    assert folder.name.startswith("fashion_mnist-mlp2x32-ist-w2-s0-")
