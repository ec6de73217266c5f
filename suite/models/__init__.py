"""The shared model family: every protocol trains these same networks. Their configs
(one class per model, registered; plugins through ``commbench.models``) are in
``suite.architectures``."""

from __future__ import annotations

from torch import nn

from suite.architectures import Model
from suite.models.mlp import MLP
from suite.models.resnet import DEPTHS, PreActBlock, PreActResNet, preact_resnet

__all__ = ["DEPTHS", "MLP", "PreActBlock", "PreActResNet", "build_model", "preact_resnet"]


def build_model(
    cfg: Model, in_channels: int, num_classes: int, input_shape: tuple[int, ...] = ()
) -> nn.Module:
    """Build the configured model for a data set's input shape (C, H, W) and class count."""
    return cfg.build(in_channels, num_classes, input_shape)
