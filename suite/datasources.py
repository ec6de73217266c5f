"""The data-set registry: every ``Dataset`` subclass with a ``name`` registers itself.

A data set is one frozen config dataclass: its fields are its knobs and their defaults,
its recipe included (CIFAR's batch of 128; the only place they are written:
``data=<name>`` is stored in Hydra's ConfigStore from it), and :meth:`Dataset.load`
reads it into tensors (``suite.data.ImageDataset``). Every data set shares the fields
of the base class: sharding, batch sizes, augmentation, downsampling, and where its
files are (``root``, ``download``: no part of a run's identity). A run's identity holds
exactly the chosen data set's fields. The readers themselves live in ``suite/data/``;
this module stays free of torch.

A data set from an installed package is found through the entry-point group
``commbench.datasets`` (``[project.entry-points."commbench.datasets"] stl10 =
"my_package.stl10"``): loading it imports the module, which registers its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from suite.plugins import Registry
from suite.schema import Checked

if TYPE_CHECKING:
    from suite.data.datasets import ImageDataset

#: The entry-point group plugins register their data-set modules under.
ENTRY_POINT_GROUP = "commbench.datasets"
#: Every data set, by name.
REGISTRY: Registry[Dataset] = Registry("data set", "data", ENTRY_POINT_GROUP, "digits")
#: Fields that say where the data lives, not what it is: no part of a run's identity.
LOCATION_FIELDS = ("root", "download")


@dataclass(frozen=True)
class Dataset(Checked):
    """A labelled image (or spectrogram) classification set, train and test splits.
    ``batch_size`` is per worker; ``sharding``: disjoint shards (DistributedSampler) or
    every worker shuffling all of it; ``downsample``: average pixels in k x k squares
    first (28x28 -> 14x14 at 2)."""

    name: str = ""
    root: str | None = None
    download: bool = False
    sharding: Literal["disjoint", "full"] = "disjoint"
    batch_size: int = 32
    eval_batch_size: int = 100
    augment: bool = True
    downsample: int = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            REGISTRY.add(cls)

    def load(self) -> ImageDataset:
        """Read it (raise ``ConfigError`` saying what is missing)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Digits(Dataset):
    """scikit-learn's UCI digits: 1797 real 8x8 grey images, 10 classes, a fixed 80/20
    split; shipped offline (the embedded default). Augmentation: random crop (padding
    1), no flips."""

    name: str = "digits"

    def load(self) -> ImageDataset:
        from suite.data.datasets import read_digits

        return read_digits()


@dataclass(frozen=True)
class Cifar10(Dataset):
    """CIFAR-10 in the official python-pickle format under ``root``."""

    name: str = "cifar10"
    batch_size: int = 128

    def load(self) -> ImageDataset:
        from suite.data.datasets import read_cifar

        return read_cifar(self)


@dataclass(frozen=True)
class Cifar100(Cifar10):
    """CIFAR-100 in the official python-pickle format under ``root``."""

    name: str = "cifar100"


@dataclass(frozen=True)
class SVHN(Dataset):
    """SVHN's cropped digits (``train_32x32.mat``, ``test_32x32.mat``) under ``root``."""

    name: str = "svhn"
    batch_size: int = 128

    def load(self) -> ImageDataset:
        from suite.data.datasets import read_svhn

        return read_svhn(self)


@dataclass(frozen=True)
class MNIST(Dataset):
    """Any MNIST-style set in the four standard IDX files under ``root``."""

    name: str = "mnist"
    batch_size: int = 128
    eval_batch_size: int = 1000
    augment: bool = False

    def load(self) -> ImageDataset:
        from suite.data.datasets import read_mnist

        return read_mnist(self)


@dataclass(frozen=True)
class FashionMNIST(Dataset):
    """Zalando's Fashion-MNIST in IDX files; ``root`` defaults to where Debian's
    ``dataset-fashion-mnist`` package puts them."""

    name: str = "fashion_mnist"
    batch_size: int = 128
    eval_batch_size: int = 1000

    def load(self) -> ImageDataset:
        from suite.data.datasets import read_fashion_mnist

        return read_fashion_mnist(self)


@dataclass(frozen=True)
class Speech(Dataset):
    """The IST papers' spoken words as log-mel spectrograms (``suite.data.audio``)."""

    name: str = "speech"
    batch_size: int = 128
    eval_batch_size: int = 1000
    augment: bool = False

    def load(self) -> ImageDataset:
        from suite.data.datasets import read_speech

        return read_speech(self)


@dataclass(frozen=True)
class Synthetic(Dataset):
    """Random tensors of any shape, for throughput work only: labels carry no signal."""

    name: str = "synthetic"
    num_train: int = 2048
    num_test: int = 512
    image_size: int = 32
    channels: int = 3
    num_classes: int = 10

    def load(self) -> ImageDataset:
        from suite.data.datasets import make_synthetic

        return make_synthetic(
            self.num_train, self.num_test, self.image_size, self.channels, self.num_classes
        )


def data_config(name: str = "digits", **knobs: Any) -> Dataset:
    """The config of the data set ``name`` with ``knobs`` set (others at its defaults)."""
    return REGISTRY.parse({"name": name, **knobs})
