"""The shared model family: every protocol trains these same networks."""

from __future__ import annotations

import math

from torch import nn

from suite.config import ModelConfig
from suite.models.mlp import MLP
from suite.models.resnet import DEPTHS, PreActBlock, PreActResNet, preact_resnet

__all__ = ["DEPTHS", "MLP", "MODELS", "PreActBlock", "PreActResNet", "build_model"]

#: Registered model names (the ``model.name`` key).
MODELS = ("preact_resnet", "mlp")


def build_model(
    cfg: ModelConfig, in_channels: int, num_classes: int, input_shape: tuple[int, ...] = ()
) -> nn.Module:
    """Build the configured model for a data set's input shape (C, H, W) and class count.

    An MLP flattens the whole input: its width is the product of ``input_shape`` (a
    speech spectrogram is 1 × 128 × 32, not square), or ``in_channels`` × 32 × 32.
    """
    if cfg.name == "preact_resnet":
        return preact_resnet(cfg.depth, num_classes, in_channels, cfg.width, cfg.bn)
    if cfg.name == "mlp":
        features = math.prod(input_shape) if input_shape else in_channels * 32 * 32
        return MLP(features, cfg.hidden, cfg.layers, num_classes, cfg.variant)
    raise ValueError(f"unknown model {cfg.name!r}; valid: {', '.join(MODELS)}")
