"""Fully connected networks of the IST papers (arXiv 1910.02120; its released code).

``variant="ist"`` is the papers' net: ``layers`` Linear layers without biases; after each
hidden one BatchNorm1d with batch statistics and ReLU; a non-affine BatchNorm1d on the
logits (it absorbs the width change of sub-networks, so no test-time rescaling is
needed) and log-softmax (the training loss, cross-entropy, is then exactly NLL).
``variant="plain"`` is an ordinary MLP for comparison: biases, running-statistics BN,
plain logits. Hidden neurons are the unit IST partitions: ``hidden[l]`` row i, its BN
entries i, and column i of the next layer all belong to neuron i of hidden layer l.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

MLP_VARIANTS = ("ist", "plain")


class MLP(nn.Module):
    """``layers`` Linear layers (2 = one hidden layer) of width ``hidden``; input flattened."""

    def __init__(
        self, in_features: int, hidden: int, layers: int, num_classes: int, variant: str = "ist"
    ) -> None:
        super().__init__()
        if variant not in MLP_VARIANTS:
            raise ValueError(f"MLP variant must be one of {MLP_VARIANTS}, got {variant!r}")
        if layers < 2:
            raise ValueError(f"an MLP needs at least 2 layers (one hidden), got {layers}")
        self.variant = variant
        self.in_features, self.hidden_width = in_features, hidden
        self.num_layers, self.num_classes = layers, num_classes
        bias, running = variant == "plain", variant == "plain"
        widths = [in_features] + [hidden] * (layers - 1)
        self.hidden = nn.ModuleList(
            nn.Linear(a, b, bias=bias) for a, b in itertools.pairwise(widths)
        )
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(hidden, track_running_stats=running) for _ in range(layers - 1)
        )
        self.out = nn.Linear(hidden, num_classes, bias=bias)
        self.out_norm = (
            nn.BatchNorm1d(num_classes, affine=False, track_running_stats=False)
            if variant == "ist"
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for linear, norm in zip(self.hidden, self.norms, strict=True):
            x = F.relu(norm(linear(x)))
        x = self.out(x)
        if self.out_norm is not None:
            return F.log_softmax(self.out_norm(x), dim=1)
        return x

    @property
    def widths(self) -> list[int]:
        """Hidden widths, one per hidden layer."""
        return [self.hidden_width] * (self.num_layers - 1)
