"""Data sets, models and optimizers as components: registered by subclassing, found
through the entry-point groups ``commbench.datasets``, ``commbench.models`` and
``commbench.optimizers`` from a package outside the suite, swept beside the built-ins,
and a broken plugin isolated and named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

import protocols
from suite import optimizers
from suite.config import ConfigError, RunConfig
from suite.optimizers import SGD, AdamW, Optimizer

PLUGIN = '''
from dataclasses import dataclass

import torch

from suite.architectures import Model
from suite.datasources import Dataset
from suite.optimizers import Optimizer


@dataclass(frozen=True)
class Stripes(Dataset):
    """Horizontal (class 0) or vertical (class 1) stripes: a user's own data set."""

    name: str = "stripes_plugin"
    size: int = 8

    def load(self):
        from suite.data import ImageDataset

        gen = torch.Generator().manual_seed(0)

        def split(n):
            y = torch.randint(0, 2, (n,), generator=gen)
            x = torch.zeros(n, 1, self.size, self.size, dtype=torch.uint8)
            x[y == 0, :, ::2, :] = 255
            x[y == 1, :, :, ::2] = 255
            return x, y

        (a, b), (c, d) = split(256), split(64)
        return ImageDataset(self.name, a, b, c, d, 2, 255.0, (0.5,), (0.5,), 0, False)


@dataclass(frozen=True)
class SmallCNN(Model):
    """One convolution, pooled: a user's own model."""

    name: str = "smallcnn_plugin"
    channels: int = 8

    def build(self, in_channels, num_classes, input_shape):
        return torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, self.channels, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(self.channels, num_classes),
        )


@dataclass(frozen=True)
class RMSprop(Optimizer):
    """torch's RMSprop, as a user's package would add it."""

    name: str = "rmsprop_plugin"
    lr: float = 0.002
    alpha: float = 0.9

    def build(self, params):
        return torch.optim.RMSprop(
            params, lr=self.lr, alpha=self.alpha, weight_decay=self.weight_decay
        )
'''


def _install_plugin(root: Path) -> dict[str, str]:
    """A package outside the suite, found the way pip installs one: a module and a
    ``.dist-info`` with its entry points (one good, one broken) on ``sys.path``."""
    root.mkdir()
    (root / "my_optimizers.py").write_text(PLUGIN)
    info = root / "my_optimizers-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-optimizers\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[commbench.optimizers]\nrmsprop_plugin = my_optimizers\nbroken_one = no_such_module\n"
        "[commbench.models]\nsmallcnn_plugin = my_optimizers\n"
        "[commbench.datasets]\nstripes_plugin = my_optimizers\n"
    )
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def test_a_subclass_with_a_name_registers_itself_and_parses_strictly():
    @dataclass(frozen=True)
    class Plain(Optimizer):
        name: str = "plain_test_sgd"
        dampening: float = 0.0

        def build(self, params):
            return torch.optim.SGD(params, lr=self.lr, dampening=self.dampening)

    try:
        assert optimizers.get("plain_test_sgd") is Plain
        cfg = optimizers.parse_config({"name": "plain_test_sgd", "dampening": 0.5})
        assert cfg == Plain(dampening=0.5) and cfg.schedule == "step"
        with pytest.raises(ConfigError, match=r"unknown key\(s\) \['momentum'\]"):
            optimizers.parse_config({"name": "plain_test_sgd", "momentum": 0.9})
        params = [torch.nn.Parameter(torch.ones(2))]
        assert isinstance(cfg.build(params), torch.optim.SGD)
    finally:
        del optimizers.REGISTRY.classes["plain_test_sgd"]
    with pytest.raises(ConfigError, match=r"unknown optimizer 'plain_test_sgd'; valid: adamw, "):
        optimizers.get("plain_test_sgd")


def test_an_optimizers_identity_is_its_own_fields():
    """A run's name hashes exactly the chosen optimizer's knobs, as the flat config it
    replaced did (older run folders, holding every optimizer's knobs, keep their names)."""
    ddp = protocols.parse_config({"name": "ddp"})
    sgd, adamw = RunConfig(protocol=ddp), RunConfig(protocol=ddp, optim=AdamW())
    assert set(sgd.semantic_dict()["optim"]) == {
        "name", "lr", "weight_decay", "schedule", "milestones", "gamma", "momentum", "nesterov"
    }  # fmt: skip
    assert set(adamw.semantic_dict()["optim"]) == {
        "name", "lr", "weight_decay", "schedule", "milestones", "gamma", "betas", "eps"
    }  # fmt: skip
    old = sgd.to_dict()
    old["optim"].update(betas=[0.9, 0.999], eps=1e-8)  # as config.yaml held them before
    assert optimizers.parse_config(old["optim"], recorded=True) == SGD()
    with pytest.raises(ConfigError, match="betas"):
        optimizers.parse_config(old["optim"])


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (SGD(lr=float("nan")), "optim.lr must be a finite number >= 0, got nan"),
        (SGD(momentum=-1.0), "optim.momentum must be a finite number >= 0"),
        (AdamW(betas=(0.9, 1.0)), r"optim.betas must be two numbers in \[0, 1\)"),
        (AdamW(eps=float("inf")), "optim.eps must be a finite number >= 0, got inf"),
    ],
)
def test_each_optimizer_names_its_bad_numbers(cfg, message):
    import re

    assert any(re.search(message, p) for p in cfg.problems()), cfg.problems()


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_plugin_components_run_beside_the_built_ins_and_a_broken_one_is_named(
    tmp_path,
):
    env = _install_plugin(tmp_path / "site")
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "suite.run", "-m", "optim=sgd,rmsprop_plugin"]
    cmd += ["model=mlp,smallcnn_plugin", "train.data_epochs=0.5"]
    proc = subprocess.run(
        [*cmd, "optim.lr=0.01", f"results_dir={results}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.count("the optimizer plugin 'broken_one' failed to load") == 1, out
    runs = sorted(p.name for p in results.glob("digits-*"))
    assert len(runs) == 4 and sum(n.startswith("digits-smallcnn_plugin-ddp-") for n in runs) == 2
    configs = {}
    for run in runs:
        summary = json.loads((results / run / "summary.json").read_text())
        assert summary["status"] == "completed", summary
        cfg = yaml.safe_load((results / run / "config.yaml").read_text())
        configs[cfg["model"]["name"], cfg["optim"]["name"]] = cfg
    plugin = configs["smallcnn_plugin", "rmsprop_plugin"]
    # its knobs, and what its family says of itself (convolutional: for readers without it)
    assert plugin["model"] == {"name": "smallcnn_plugin", "channels": 8, "convolutional": True}
    assert plugin["optim"]["alpha"] == 0.9 and plugin["optim"]["lr"] == 0.01
    assert "alpha" not in configs["mlp", "sgd"]["optim"]
    assert configs["mlp", "sgd"]["optim"]["momentum"] == 0.9
    # The plugin's data set, with its own knob, trains the plugin's model.
    own = ["data=stripes_plugin", "data.size=16", "model=smallcnn_plugin"]
    proc = subprocess.run(
        [sys.executable, "-m", "suite.run", *own, "train.data_epochs=2", f"results_dir={results}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = results.glob("stripes_plugin-smallcnn_plugin-ddp-w2-s0-*")
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["size"] == 16
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    # A broken plugin, chosen, is refused by name before any process starts.
    proc = subprocess.run(
        [sys.executable, "-m", "suite.run", "optim=broken_one", f"results_dir={results}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "optim=broken_one is a plugin that failed to load" in proc.stdout + proc.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "suite.list"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "from my-optimizers: lr=0.002" in listing
    assert "smallcnn_plugin from my-optimizers: channels=8" in listing
    assert "stripes_plugin from my-optimizers:" in listing and "size=8" in listing
    assert "optim=broken_one: ModuleNotFoundError" in listing


def test_a_taken_name_or_a_class_that_is_no_frozen_dataclass_is_refused():
    """A plugin must not silently replace a built-in (its runs would take the built-in's
    folder names), nor register a class whose knobs are not fields."""
    with pytest.raises(TypeError, match=r"optimizer name 'sgd' is taken by suite.optimizers.SGD"):

        @dataclass(frozen=True)
        class Impostor(Optimizer):
            name: str = "sgd"

    class NotADataclass(Optimizer):
        name = "not_a_dataclass_test"

    try:
        with pytest.raises(TypeError, match=r"NotADataclass must be a @dataclass\(frozen=True\)"):
            optimizers.load_all()
    finally:
        del optimizers.REGISTRY.classes["not_a_dataclass_test"]
    assert "sgd" in optimizers.load_all()
