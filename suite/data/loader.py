"""Batches for one worker, on the training device, with augmentation done on tensors.

Two sharding modes:

- ``disjoint``: DistributedSampler semantics. Each epoch one permutation, shared by all
  ranks (seeded by seed and epoch), padded to a multiple of the world size; rank r takes
  every world-th index from r. Workers see disjoint shards.
- ``full``: what the released ResIST code does. Every worker shuffles and walks the
  whole training set with its own permutation (seeded by seed, rank and epoch).

Incomplete final batches are dropped, so every step of every worker has the same batch
size (required for the N-workers ≡ one worker with N× batch equivalence).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from suite.data.datasets import ImageDataset
from suite.seeding import seeded_generator

#: Stream tags: no two of a rank's generators may share a seed. The augmentation keeps
#: its tag (its draws in every run so far stay as they were); the per-rank epoch orders
#: of ``sharding=full`` carry their own (without it, epoch 7's order seed was the
#: augmentation's: the same random stream drove both).
AUG_STREAM = 7
FULL_ORDER_STREAM = 11


class Normalizer:
    """Raw image tensor → float, normalised per channel, on the device."""

    def __init__(self, ds: ImageDataset, device: torch.device) -> None:
        self.scale = ds.scale
        self.mean = torch.tensor(ds.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(ds.std, device=device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / self.scale - self.mean) / self.std


def augment(
    x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop with zero padding, then random horizontal flip, per sample, batched."""
    n, _, h, w = x.shape
    rng = gen.device if gen is not None else None  # draw where the generator lives
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen, device=rng).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen, device=rng).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if flip:
        mask = torch.rand(n, generator=gen, device=rng) < 0.5
        x = torch.where(mask.to(x.device)[:, None, None, None], x.flip(3), x)
    return x


class TrainBatches:
    """An endless, resumable stream of (inputs, labels) training batches for one rank."""

    def __init__(
        self,
        ds: ImageDataset,
        rank: int,
        world: int,
        batch_size: int,
        sharding: str,
        seed: int,
        device: torch.device,
        augment: bool = True,
        channels_last: bool = False,
    ) -> None:
        if sharding not in ("disjoint", "full"):
            raise ValueError(f"sharding must be 'disjoint' or 'full', got {sharding!r}")
        self.ds, self.rank, self.world = ds, rank, world
        self.batch_size, self.sharding, self.seed = batch_size, sharding, seed
        self.device = device
        self.images = ds.train_x.to(device)
        self.labels = ds.train_y.to(device)
        self.normalize = Normalizer(ds, device)
        self.augment = augment and (ds.crop_padding > 0 or ds.flip)
        self.channels_last = channels_last and ds.train_x.dim() == 4
        self.aug_gen = seeded_generator(seed, rank, AUG_STREAM)
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order()

    def batches_per_epoch(self) -> int:
        """Full batches this rank gets from one pass over its shard."""
        return len(self._order) // self.batch_size

    def _epoch_order(self) -> torch.Tensor:
        n = self.ds.num_train
        if self.sharding == "full":
            order = seeded_generator(self.seed, self.rank, self.epoch, FULL_ORDER_STREAM)
            return torch.randperm(n, generator=order)
        perm = torch.randperm(n, generator=seeded_generator(self.seed, self.epoch))
        pad = (-n) % self.world
        if pad:
            perm = torch.cat([perm, perm[:pad]])
        return perm[self.rank :: self.world]

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self.batch_size > len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order()
        idx = self._order[self.position : self.position + self.batch_size].to(self.device)
        self.position += self.batch_size
        x = self.images[idx]
        if self.augment:
            x = augment(x, self.ds.crop_padding, self.ds.flip, self.aug_gen)
        x = self.normalize(x)
        if self.channels_last:  # NHWC, as the convolutions' weights are
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx]

    def state_dict(self) -> dict[str, Any]:
        """Position in the data order and augmentation RNG state, for resuming."""
        return {"epoch": self.epoch, "position": self.position, "aug": self.aug_gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.aug_gen.set_state(state["aug"])
        self._order = self._epoch_order()


def eval_batches(
    ds: ImageDataset, batch_size: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The test set in fixed order and fixed batches (batch statistics depend on them)."""
    norm = Normalizer(ds, device)
    x, y = ds.test_x.to(device), ds.test_y.to(device)
    return [
        (norm(x[i : i + batch_size]), y[i : i + batch_size]) for i in range(0, len(y), batch_size)
    ]
