"""The shared model family: every protocol trains these same networks. Their configs
(one class per model, registered; plugins through ``commbench.models``) are in
``suite.architectures``, whose ``build`` makes them."""

from __future__ import annotations

from suite.models.mlp import MLP
from suite.models.resnet import DEPTHS, PreActBlock, PreActResNet, preact_resnet

__all__ = ["DEPTHS", "MLP", "PreActBlock", "PreActResNet", "preact_resnet"]
