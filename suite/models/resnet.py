"""CIFAR-style pre-activation ResNets built from basic blocks (He et al. 2016, v2).

Follows the model of the released ResIST code (``shared/reference/protocols.md`` §1):
a 3x3 stem conv with no BN after it; blocks BN → ReLU → conv3x3(stride) → BN → ReLU →
conv3x3 whose shortcut is the identity or a 1x1 conv (no BN, no bias) applied to the
*pre-activated* input; stages 2-4 start with stride 2; no final BN/ReLU; global
average pooling (the 4x4 pool of a 32x32 input) and a linear classifier.

Two hooks exist for sub-network protocols: a block can be made inactive (skipped
entirely, the identity) and its residual branch can be scaled (ResIST's test-time
scaling). Both are plain attributes, so toggling them is free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Blocks per stage for the named depths. All use basic blocks, as the ResIST code does
#: (its "PreActResNet101" is [3, 4, 23, 3] basic blocks, not bottlenecks).
DEPTHS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 4, 36, 3),
    200: (3, 4, 50, 3),
}

BN_MODES = ("batch", "running", "none")


def make_bn(channels: int, bn: str) -> nn.Module:
    """BatchNorm with batch statistics always (``batch``), running statistics, or none.

    ``none`` (identity) gives a network whose gradient is a plain mean over samples, so
    N data-parallel workers equal one worker with an N× batch exactly.
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    if bn == "none":
        return nn.Identity()
    return nn.BatchNorm2d(channels, track_running_stats=(bn == "running"))


class PreActBlock(nn.Module):
    """Pre-activation basic block with an on/off switch and a residual-branch scale."""

    def __init__(self, in_planes: int, planes: int, stride: int, bn: str) -> None:
        super().__init__()
        self.bn1 = make_bn(in_planes, bn)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = make_bn(planes, bn)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        #: When False the block is the identity and costs no compute.
        self.active = True
        #: Multiplies the residual branch (not the shortcut); 1.0 while training.
        self.residual_scale = 1.0

    @property
    def skippable(self) -> bool:
        """Only shape-preserving blocks can be dropped from the network."""
        return self.shortcut is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        if self.residual_scale != 1.0:
            out = out * self.residual_scale
        return out + shortcut


class Head(nn.Module):
    """Global average pooling and the classifier: the network's last unit."""

    def __init__(self, fc: nn.Linear) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class PreActResNet(nn.Module):
    """Pre-activation ResNet of basic blocks; ``stages[i]`` holds stage i+1's blocks."""

    def __init__(
        self,
        blocks: tuple[int, ...] = DEPTHS[18],
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        bn: str = "batch",
    ) -> None:
        super().__init__()
        widths = [max(1, round(w * width)) for w in (64, 128, 256, 512)]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        stages = []
        in_planes = widths[0]
        for i, (n, planes) in enumerate(zip(blocks, widths, strict=True)):
            layer = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layer.append(PreActBlock(in_planes, planes, stride, bn))
                in_planes = planes
            stages.append(nn.Sequential(*layer))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        for stage in self.stages:
            out = stage(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)

    def blocks(self) -> list[PreActBlock]:
        """All residual blocks in forward order."""
        return [b for b in self.stages.modules() if isinstance(b, PreActBlock)]

    def units(self) -> list[nn.Module]:
        """The network as consecutive units (stem, every block, head); chaining them is
        ``forward``. The head wraps ``fc`` itself, so training a unit trains the model."""
        return [self.stem, *self.blocks(), Head(self.fc)]

    def partitionable_blocks(self) -> list[PreActBlock]:
        """Blocks ResIST deals out: stage 3's non-first (non-strided) blocks."""
        return [b for b in list(self.stages[2].children())[1:] if isinstance(b, PreActBlock)]


def preact_resnet(
    depth: int,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    bn: str = "batch",
) -> PreActResNet:
    """Build a pre-activation ResNet of a named depth (one of :data:`DEPTHS`)."""
    if depth not in DEPTHS:
        raise ValueError(f"unknown ResNet depth {depth}; valid: {sorted(DEPTHS)}")
    if width <= 0:
        raise ValueError(f"width multiplier must be > 0, got {width}")
    return PreActResNet(DEPTHS[depth], num_classes, in_channels, width, bn)
