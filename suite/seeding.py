"""Shared randomness: generators every rank derives identically from integers."""

from __future__ import annotations

import torch


def seeded_generator(*seeds: int) -> torch.Generator:
    """A CPU generator seeded by a stable mix of integers (same on every rank)."""
    value = 0
    for s in seeds:  # a simple, stable mix of the integers (no Python hash randomisation)
        value = (value * 1_000_003 + int(s) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(value)
