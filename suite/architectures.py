"""The model registry: every ``Model`` subclass with a ``name`` registers itself.

A model is one frozen config dataclass: its fields are its knobs and their defaults
(the only place they are written: ``model=<name>`` is stored in Hydra's ConfigStore
from it), :meth:`Model.build` makes the network, :attr:`Model.tag` names it in run
folders and :meth:`Model.label` in the report. A run's identity holds exactly the chosen
model's fields. The networks themselves live in ``suite/models/``; this module stays
free of torch so that configs can be read without it.

A model from an installed package is found through the entry-point group
``commbench.models`` (``[project.entry-points."commbench.models"] vit =
"my_package.vit"``): loading it imports the module, which registers its class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from suite.plugins import Registry
from suite.schema import Checked, ConfigError

if TYPE_CHECKING:
    from torch import nn

#: The entry-point group plugins register their model modules under.
ENTRY_POINT_GROUP = "commbench.models"
#: Every model, by name.
REGISTRY: Registry[Model] = Registry("model", "model", ENTRY_POINT_GROUP, "preact_resnet")


@dataclass(frozen=True)
class Model(Checked):
    """A network every protocol can train. Subclasses set ``name``, add their knobs
    and :meth:`build`; they register themselves."""

    name: str = ""

    #: Whether it convolves images (``train.channels_last`` applies; for a model that
    #: does not, that setting is no part of a run's identity).
    convolutional: ClassVar[bool] = True
    #: The fields :meth:`label` names (the report shows the others as knobs).
    label_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            REGISTRY.add(cls)

    @property
    def tag(self) -> str:
        """A short readable name for run folders (changing it renames runs)."""
        return self.name

    def label(self) -> str:
        """The name the report's tables and figures give it."""
        return self.tag

    def build(self, in_channels: int, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        """The network for inputs of ``input_shape`` (C, H, W) and ``num_classes``."""
        raise NotImplementedError


@dataclass(frozen=True)
class PreActResNetConfig(Model):
    """CIFAR-style pre-activation ResNet of basic blocks: depth 18, 34, 101 ([3, 4, 23,
    3]), 152 or 200; ``width`` multiplies the 64/128/256/512 channels (1.0 in the
    papers); ``bn``: batch statistics at train and test time (the ResIST code), running
    statistics, or none."""

    name: str = "preact_resnet"
    depth: int = 101
    width: float = 0.125
    bn: Literal["batch", "running", "none"] = "batch"

    label_fields: ClassVar[tuple[str, ...]] = ("depth", "width")

    @property
    def tag(self) -> str:
        return f"{self.name}{self.depth}"

    def label(self) -> str:
        return f"{self.name}{self.depth}x{self.width:g}"

    def build(self, in_channels: int, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        from suite.models.resnet import preact_resnet

        return preact_resnet(self.depth, num_classes, in_channels, self.width, self.bn)


@dataclass(frozen=True)
class MLPConfig(Model):
    """The IST papers' fully connected nets: ``layers`` Linear layers (2 = one hidden
    layer) of width ``hidden`` (4096 / 8192 in the papers), input flattened. ``ist``: no
    biases, batch-statistics BN after each hidden layer, non-affine BN on the logits,
    log-softmax; ``plain``: biases and running BN."""

    name: str = "mlp"
    hidden: int = 1024
    layers: int = 2
    variant: Literal["ist", "plain"] = "ist"

    convolutional: ClassVar[bool] = False
    label_fields: ClassVar[tuple[str, ...]] = ("layers", "hidden")

    @property
    def tag(self) -> str:
        return f"mlp{self.layers}x{self.hidden}"

    def build(self, in_channels: int, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        """Its width is the product of ``input_shape`` (a speech spectrogram is 1 × 128 ×
        32, not square), or ``in_channels`` × 32 × 32."""
        from suite.models.mlp import MLP

        features = math.prod(input_shape) if input_shape else in_channels * 32 * 32
        return MLP(features, self.hidden, self.layers, num_classes, self.variant)


def parse_config(values: dict[str, Any] | None, recorded: bool = False) -> Model:
    """``{name: ..., knobs...}`` → that model's config (``Registry.parse``)."""
    return REGISTRY.parse(values, recorded)


def label_of(values: dict[str, Any]) -> str:
    """The report's name of a recorded model config (its name if its model is not
    installed here)."""
    try:
        return REGISTRY.parse(values, recorded=True).label()
    except ConfigError:
        return str(values.get("name"))


def label_fields() -> set[str]:
    """Every model field some model's label names (``model.name`` included)."""
    fields = {"model.name"}
    for cls in REGISTRY.load_all().values():
        fields |= {f"model.{f}" for f in cls.label_fields}
    return fields
