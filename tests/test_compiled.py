"""train.compile: torch.compile of the trained module, a ResNet block by block."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import run_ranks, tiny_config, train_rank

from suite.compiled import compile_in_place
from suite.config import TrainConfig
from suite.models.mlp import MLP
from suite.models.resnet import preact_resnet
from suite.problem import parse_run_config


def test_a_resnet_is_compiled_block_by_block_and_an_mlp_whole():
    net = preact_resnet(18, 10, 1, 1 / 16, "batch")
    compile_in_place(net)
    assert all(b._compiled_call_impl is not None for b in net.blocks())
    assert net._compiled_call_impl is None  # not the whole: its graph would change per round
    mlp = MLP(64, 32, 2, 10, "ist")
    compile_in_place(mlp)
    assert mlp._compiled_call_impl is not None
    assert set(mlp.state_dict()) == set(MLP(64, 32, 2, 10, "ist").state_dict())  # names kept


def test_compile_off_keeps_the_run_name_and_on_gives_another():
    cfg = tiny_config("resist")
    on = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=True))
    assert on.run_name() != cfg.run_name()
    # The name of a run recorded before the option existed (no train.compile key).
    recorded = cfg.to_dict()
    recorded["train"].pop("compile")
    assert TrainConfig().compile is False
    assert parse_run_config(recorded, recorded=True).run_name() == cfg.run_name()


@pytest.mark.slow  # compiles: tens of seconds on two cores
def test_compiled_training_steps_equal_the_eager_ones():
    """Three SGD steps of a batch-statistics pre-act ResNet, compiled block by block and
    eager, from the same weights on the same batches: the losses and the weights agree
    to float32 rounding (the kernels fuse differently, so not bit for bit)."""
    torch.manual_seed(0)
    eager = preact_resnet(18, 10, 3, 1 / 16, "batch").to(memory_format=torch.channels_last)
    compiled = preact_resnet(18, 10, 3, 1 / 16, "batch").to(memory_format=torch.channels_last)
    compiled.load_state_dict(eager.state_dict())
    compile_in_place(compiled)
    batches = [(torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))) for _ in range(3)]
    losses = {}
    for name, net in (("eager", eager), ("compiled", compiled)):
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        losses[name] = []
        for x, y in batches:
            loss = F.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    for (key, a), b in zip(eager.state_dict().items(), compiled.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow  # two real compiled runs
def test_resist_compiles_its_blocks_once_not_every_round(tmp_path):
    """ResIST deals a new sub-network every round: as many graphs are compiled for a
    run of a few rounds as for one of several times as many (no tracing per round)."""
    graphs, rounds = [], []
    for epochs in (0.1, 0.5):
        cfg = tiny_config(
            "resist",
            protocol_kw={"local_steps": 2},
            model={"depth": 34},
            train={"data_epochs": epochs, "eval_every": 1e9, "compile": True},
        )
        (result, _) = run_ranks(train_rank, 2, tmp_path, cfg)
        summary = result["summary"]
        assert summary["status"] == "completed", summary
        graphs.append(summary["compiled_graphs"])
        rounds.append(summary["rounds"])
    assert rounds[1] >= 3 * rounds[0] and rounds[0] >= 2, rounds
    assert graphs[0] == graphs[1] > 0, (graphs, rounds)
