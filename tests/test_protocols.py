"""Contract tests over the protocol registry (world size 1: no process group needed)."""

import dataclasses

import pytest
import torch
from helpers import problem, set_up, shipped_protocols

import protocols
from suite.architectures import MLPConfig, PreActResNetConfig
from suite.data import TrainBatches, load_dataset
from suite.datasources import data_config
from suite.dist import Comm
from suite.models.resnet import preact_resnet

CPU = torch.device("cpu")
NAMES = shipped_protocols()


def _info(model, batch=16):
    return problem(model, batch_size=batch)


@pytest.mark.parametrize("name", NAMES)
def test_class_contract(name):
    cls = protocols.get(name)
    assert cls.name == name and cls.__doc__ and len(cls.__doc__.splitlines()) >= 3
    cfg = protocols.parse_config({"name": name})
    assert cfg.name == name
    with pytest.raises(dataclasses.FrozenInstanceError):  # a run's settings can't drift
        cfg.name = "x"


#: The shared models, as model configs; each protocol is tested on the first
#: one it supports (ResIST needs partitionable blocks, IST an MLP).
MODELS = [PreActResNetConfig(depth=34, width=1 / 16), MLPConfig(hidden=32, layers=3)]


def _model_config_for(name):
    cfg = protocols.parse_config({"name": name})
    for overrides in MODELS:
        model = overrides.build(
            in_channels=1,
            num_classes=10,
            input_shape=(1, 8, 8),
        )
        if protocols.get(name).supports(cfg, _info(model), 1) is None:
            return overrides, model
    raise AssertionError(f"{name} supports none of the shared models")


@pytest.mark.parametrize("name", NAMES)
def test_one_round_and_state_round_trip(name):
    cfg = protocols.parse_config({"name": name})
    torch.manual_seed(0)
    _, model = _model_config_for(name)
    proto = protocols.build(cfg)
    set_up(proto, model, Comm(0, 1, CPU))
    batches = TrainBatches(load_dataset(data_config()), 0, 1, 16, "disjoint", 0, CPU)
    before = [p.detach().clone() for p in proto.eval_model().parameters()]
    work = proto.begin_round(0)
    for _ in range(proto.local_steps):
        x, y = next(batches)
        loss = torch.nn.functional.cross_entropy(work.module(x), y)
        work.optimizer.zero_grad()
        loss.backward()
        proto.after_backward(work)
        work.optimizer.step()
    proto.end_round(0, work)
    after = list(proto.eval_model().parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    state = proto.state_dict()
    fresh = protocols.build(cfg)
    set_up(fresh, model, Comm(0, 1, CPU))
    fresh.load_state_dict(state)
    assert str(fresh.state_dict()) == str(state)


def test_supports_refuses_impossible_settings():
    model = preact_resnet(18, 10, width=1 / 16)
    single = protocols.parse_config({"name": "single"})
    assert "exactly one worker" in protocols.get("single").supports(single, _info(model), 2)
    bad = protocols.parse_config({"name": "localsgd", "local_steps": 0})
    assert "local_steps must be >= 1" in protocols.get("localsgd").supports(bad, _info(model), 2)
