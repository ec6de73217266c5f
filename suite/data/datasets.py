"""Data sets as whole tensors: real formats on disk, an embedded real set, and synthetic.

Every data set is held as raw image tensors (N, C, H, W) plus int64 labels, small
enough to live on the training device, so batching and augmentation never touch the
host. ``scale`` maps the raw values to [0, 1]; ``mean``/``std`` then normalise.

- ``digits``: the UCI 8x8 handwritten digits that ship inside scikit-learn (1797 real
  images, 1 channel, 10 classes). The embedded default: no download, no files.
- ``cifar10``, ``cifar100``: the official python-pickle format (``cifar-10-batches-py``,
  ``cifar-100-python``) under ``data.root``; fetched the usual way with ``download``.
- ``svhn``: the official cropped-digits ``.mat`` files (``train_32x32.mat``,
  ``test_32x32.mat``) under ``data.root``.
- ``mnist``: any MNIST-style set in the four standard IDX files under ``data.root``.
- ``fashion_mnist``: Zalando's Fashion-MNIST (60,000 + 10,000 real 28x28 grey images of
  clothing, 10 classes, MIT licence) in the same IDX files; ``data.root`` defaults to
  where Debian's ``dataset-fashion-mnist`` package puts them. Normalised with the
  training set's mean and std (0.2860, 0.3530, over all 47M training pixels in [0, 1]).
  Augmentation: random crop with padding 2 and horizontal flips, both label-preserving
  for clothing (a mirrored shoe or shirt is the same class); no vertical flips or
  rotations (an upside-down shoe or dress is not a picture in the set).
- ``synthetic``: random tensors of any shape, for throughput work only. Its labels
  carry no signal; accuracy on it means nothing.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import importlib.util
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np
import torch

from suite.data.audio import SPEECH_WORDS, find_idx, read_idx, speech_features
from suite.schema import ConfigError


@dataclass
class ImageDataset:
    """Train and test splits as tensors, with what the model and augmentation need."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # random-crop padding used for augmentation (0: none)
    flip: bool  # horizontal flips are label-preserving for this data
    synthetic: bool = False

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])


class Source(Protocol):
    """What a reader needs of a data set's config (``suite.datasources.Dataset``; the
    configs import the readers, not the other way)."""

    @property
    def name(self) -> str: ...
    @property
    def root(self) -> str | None: ...
    @property
    def download(self) -> bool: ...
    @property
    def downsample(self) -> int: ...
    def load(self) -> ImageDataset: ...


#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
#: Mean and std of the Fashion-MNIST training pixels scaled to [0, 1] (all 60,000 images).
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_STATS = ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276))
SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))


def load_dataset(cfg: Source) -> ImageDataset:
    """Load the configured data set (``Dataset.load``), downsampled if asked, or raise
    :class:`ConfigError` saying what is missing."""
    ds = cfg.load()
    return downsampled(ds, cfg.downsample) if cfg.downsample > 1 else ds


def downsampled(ds: ImageDataset, factor: int) -> ImageDataset:
    """Every image averaged over ``factor`` x ``factor`` pixel squares (28x28 -> 14x14 at
    2), rounded back to the raw value range; a smaller input when time is short. The
    crop padding shrinks with the image (at least 1 where there was any)."""
    if ds.image_size % factor or ds.train_x.dim() != 4:
        raise ConfigError(
            f"data.downsample={factor} does not divide the {ds.image_size}x{ds.image_size} "
            f"images of {ds.name}; use a divisor of {ds.image_size}"
        )

    def pool(x: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.avg_pool2d(x.float(), factor).round_()
        return out.to(x.dtype)

    padding = max(1, ds.crop_padding // factor) if ds.crop_padding else 0
    return dataclasses.replace(
        ds, train_x=pool(ds.train_x), test_x=pool(ds.test_x), crop_padding=padding
    )


def digits_file() -> Path:
    """scikit-learn's copy of the UCI handwritten digits (1797 rows: 64 pixel values
    0..16, then the label), found without importing scikit-learn: its import takes
    2.3 s (scipy.stats among it), longer than reading the file, and every command line
    that checks a digits run before starting ranks paid it."""
    spec = importlib.util.find_spec("sklearn")
    places = list(spec.submodule_search_locations or []) if spec else []
    for place in places:
        path = Path(place) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    raise ConfigError(
        "data=digits reads scikit-learn's bundled digits.csv.gz, and no installed "
        "scikit-learn has it: pip install scikit-learn (a dependency of the suite)"
    )


def read_digits() -> ImageDataset:
    with gzip.open(digits_file(), "rt") as text:
        table = np.loadtxt(text, delimiter=",")  # as sklearn.datasets.load_digits reads it
    images = torch.from_numpy(table[:, :-1].reshape(-1, 1, 8, 8).astype(np.uint8))  # 0..16
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    # A fixed 80/20 split, independent of the run's seed, so every run sees the same test set.
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(labels))
    train, test = order[:cut], order[cut:]
    scaled = images[train].float() / 16.0
    return ImageDataset(
        "digits",
        images[train],
        labels[train],
        images[test],
        labels[test],
        num_classes=10,
        scale=16.0,
        mean=(float(scaled.mean()),),
        std=(float(scaled.std()),),
        crop_padding=1,
        flip=False,
    )


def _root(cfg: Source) -> Path:
    if cfg.root is None:
        raise ConfigError(
            f"data set {cfg.name!r} is read from disk: set data.root=/path/to/folder "
            "(and data.download=true to fetch it when online)"
        )
    return Path(cfg.root).expanduser()


#: The official python-pickle layout: folder, training files, test file, label key.
CIFAR_FILES = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "labels",
    ),
    "cifar100": ("cifar-100-python", ["train"], "test", "fine_labels"),
}


def read_cifar(cfg: Source) -> ImageDataset:
    """CIFAR-10/100 read straight from the official pickles (no checksum: a file that is
    missing, truncated or not in the format fails with the reason). ``data.download``
    fetches the archive with torchvision first, which verifies its checksum."""
    root = _root(cfg)
    folder, train_files, test_file, key = CIFAR_FILES[cfg.name]
    try:
        if cfg.download:
            tv = torchvision_datasets()
            (tv.CIFAR10 if cfg.name == "cifar10" else tv.CIFAR100)(str(root), download=True)
        trx, tr_y = _cifar_split([root / folder / f for f in train_files], key)
        tex, te_y = _cifar_split([root / folder / test_file], key)
    except Exception as err:  # a missing file, or one that does not parse
        raise ConfigError(
            f"{cfg.name} not found or corrupted under {root} (expected {root / folder}/ as in "
            f"the official python tarball): {type(err).__name__}: {err}; set data.root, or "
            "data.download=true when online"
        ) from err
    mean, std = CIFAR10_STATS if cfg.name == "cifar10" else CIFAR100_STATS
    num_classes = 10 if cfg.name == "cifar10" else 100
    return ImageDataset(cfg.name, trx, tr_y, tex, te_y, num_classes, 255.0, mean, std, 4, True)


def _cifar_split(files: list[Path], key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels of CIFAR pickle files, concatenated."""
    images, labels = [], []
    for path in files:
        with open(path, "rb") as f:  # a missing file: its OSError names it
            try:
                entry = pickle.load(f, encoding="latin1")
            except Exception as err:  # unpickling a cut-short file fails in many ways
                raise ValueError(
                    f"{path} is truncated or not a CIFAR pickle ({type(err).__name__}: {err})"
                ) from err
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{path.name}: 'data' has shape {data.shape}, not (N, 3072)")
        if len(entry[key]) != len(data):
            raise ValueError(f"{path.name}: {len(entry[key])} labels for {len(data)} images")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.tensor(entry[key], dtype=torch.int64))
    return torch.cat(images), torch.cat(labels)


def read_svhn(cfg: Source) -> ImageDataset:
    tv = torchvision_datasets()
    root = _root(cfg)
    try:
        train = tv.SVHN(str(root), split="train", download=cfg.download)
        test = tv.SVHN(str(root), split="test", download=cfg.download)
    except Exception as err:
        raise ConfigError(
            f"svhn not found or corrupted under {root} (expected train_32x32.mat and "
            f"test_32x32.mat): {type(err).__name__}: {err}; set data.root, or "
            "data.download=true when online"
        ) from err

    def tensors(split: object) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(split.data))  # type: ignore[attr-defined]
        return x, torch.from_numpy(split.labels.astype(np.int64))  # type: ignore[attr-defined]

    (trx, tr_y), (tex, te_y) = tensors(train), tensors(test)
    return ImageDataset("svhn", trx, tr_y, tex, te_y, 10, 255.0, *SVHN_STATS, 4, False)


IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _read_idx_set(root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train images (N, 1, H, W), train labels, test images, test labels from the four
    standard IDX files (each plain or ``.gz``); raises naming the file at fault."""
    arrays = {}
    for name in IDX_FILES:
        path = find_idx(root, name)
        try:
            arrays[name] = torch.from_numpy(read_idx(path).copy())
        except Exception as err:
            raise ValueError(f"{path}: {type(err).__name__}: {err}") from err
    trx, tr_y, tex, te_y = (arrays[n] for n in IDX_FILES)
    if len(trx) != len(tr_y) or len(tex) != len(te_y):
        raise ValueError(
            f"{len(trx)} train images for {len(tr_y)} labels, "
            f"{len(tex)} test images for {len(te_y)} labels"
        )
    return trx.unsqueeze(1), tr_y.long(), tex.unsqueeze(1), te_y.long()


def read_mnist(cfg: Source) -> ImageDataset:
    root = _root(cfg)
    try:
        trx, tr_y, tex, te_y = _read_idx_set(root)
    except Exception as err:  # missing file, or not the IDX format
        raise ConfigError(
            f"mnist not found or corrupted under {root} (expected the four IDX files, e.g. "
            f"train-images-idx3-ubyte[.gz]): {type(err).__name__}: {err}"
        ) from err
    scaled = trx.float() / 255.0
    classes = int(max(tr_y.max(), te_y.max())) + 1
    return ImageDataset(
        "mnist",
        trx,
        tr_y,
        tex,
        te_y,
        max(classes, 10),
        255.0,
        (float(scaled.mean()),),
        (float(scaled.std()),),
        0,
        False,
    )


def read_fashion_mnist(cfg: Source) -> ImageDataset:
    """Fashion-MNIST from its IDX files (see the module docstring)."""
    root = Path(cfg.root or FASHION_MNIST_ROOT).expanduser()
    if not any(root.glob("train-images-idx3-ubyte*")) and cfg.root is None:
        raise ConfigError(
            f"fashion_mnist not found under {root}: install it with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or point "
            "data.root=/path/to/folder at the four IDX files (train-images-idx3-ubyte.gz, ...)"
        )
    try:
        trx, tr_y, tex, te_y = _read_idx_set(root)
        if trx.shape[-2:] != (28, 28) or int(max(tr_y.max(), te_y.max())) > 9:
            raise ValueError(
                f"images {tuple(trx.shape[-2:])} and labels up to "
                f"{int(max(tr_y.max(), te_y.max()))}: not 28x28 images of 10 classes"
            )
    except Exception as err:
        raise ConfigError(
            f"fashion_mnist not found or corrupted under {root} (expected the four IDX "
            f"files, e.g. train-images-idx3-ubyte.gz; `apt-get install "
            f"dataset-fashion-mnist` installs them under {FASHION_MNIST_ROOT}): "
            f"{type(err).__name__}: {err}"
        ) from err
    mean, std = FASHION_MNIST_STATS
    return ImageDataset("fashion_mnist", trx, tr_y, tex, te_y, 10, 255.0, mean, std, 2, True)


def read_speech(cfg: Source) -> ImageDataset:
    root = _root(cfg)
    try:
        f = speech_features(root)
    except Exception as err:
        raise ConfigError(
            f"speech not found or corrupted under {root} (expected Speech Commands v0.02 as "
            f"<word>/*.wav): {type(err).__name__}: {err}"
        ) from err
    mean, std = float(f["train_x"].mean()), float(f["train_x"].std())
    return ImageDataset(
        "speech",
        f["train_x"],
        f["train_y"],
        f["test_x"],
        f["test_y"],
        len(SPEECH_WORDS),
        1.0,
        (mean,),
        (std,),
        0,
        False,
    )


def make_synthetic(
    num_train: int, num_test: int, image_size: int, channels: int, num_classes: int
) -> ImageDataset:
    gen = torch.Generator().manual_seed(1234)
    shape = (channels, image_size, image_size)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8)
        return x, torch.randint(0, num_classes, (n,), generator=gen)

    (trx, tr_y), (tex, te_y) = split(num_train), split(num_test)
    half = (0.5,) * channels
    return ImageDataset(
        "synthetic", trx, tr_y, tex, te_y, num_classes, 255.0, half, half, 4, True, True
    )


_TORCHVISION_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def torchvision_datasets() -> ModuleType:
    """Import ``torchvision.datasets``, tolerating a torchvision whose C++ ops cannot load.

    A CUDA-built torchvision beside a CPU-only torch (the only pairing PyPI offers for a
    CPU box) fails at import on an unguarded fake registration of ``torchvision::nms``.
    Only in that case do we declare the two op schemas and import again; a matched
    install is never touched. The data sets need none of the C++ ops.
    """
    try:
        return importlib.import_module("torchvision.datasets")
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[mod]
    lib = torch.library.Library("torchvision", "DEF")  # see the docstring
    for schema in _TORCHVISION_OPS:
        lib.define(schema)
    _KEEP.append(lib)  # the definitions live as long as the Library object
    return importlib.import_module("torchvision.datasets")


_KEEP: list[object] = []
