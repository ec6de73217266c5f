"""The shared data layer: data sets, sharding across workers, on-device augmentation."""

from suite.data.datasets import ImageDataset, load_dataset
from suite.data.loader import TrainBatches, augment, eval_batches

__all__ = ["ImageDataset", "TrainBatches", "augment", "eval_batches", "load_dataset"]
