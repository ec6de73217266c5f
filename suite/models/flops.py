"""Counting multiply-accumulates on real modules (for compute ratios and balanced cuts)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def count_macs(model: nn.Module, x: torch.Tensor, per_module: bool = False) -> Any:
    """Multiply-accumulates of one forward pass through convolutions and linear layers.

    With ``per_module`` returns a dict module → MACs instead of the total.
    """
    counts: dict[nn.Module, int] = {}

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            counts[module] = (
                counts.get(module, 0)
                + output.numel() * module.in_channels // module.groups * kernel
            )
        elif isinstance(module, nn.Linear):
            counts[module] = counts.get(module, 0) + output.numel() * module.in_features

    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return counts if per_module else sum(counts.values())


def sub_resnet_macs(model: nn.Module, x: torch.Tensor, depth: int) -> int:
    """MACs of one forward pass with only the first ``depth`` partitionable blocks active
    (a ResIST sub-ResNet's cost; which blocks does not matter, they are alike)."""
    blocks = model.partitionable_blocks()  # type: ignore[operator]
    try:
        for i, b in enumerate(blocks):
            b.active = i < depth
        return int(count_macs(model, x))
    finally:
        for b in blocks:
            b.active = True
