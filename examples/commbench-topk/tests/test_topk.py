"""The suite's contract kit over this plugin, and what top-k itself claims.

Runs installed (``pip install -e examples/commbench-topk``) or not: without the install
this folder's package is put on the path, and spawned ranks inherit it.
"""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import commbench_topk  # registers protocol "topk"

import protocols
from suite.dist import Comm
from suite.testing import NotApplicable, contract, kit_config

CPU = torch.device("cpu")


@pytest.mark.parametrize("check", contract("topk"), ids=lambda c: c.__name__)
def test_contract(check, tmp_path):
    try:
        check(tmp_path)
    except NotApplicable as why:
        pytest.skip(str(why))


def test_error_feedback_sends_the_largest_entries_and_keeps_the_rest():
    model = nn.Linear(4, 1, bias=False)  # 4 parameters; density 0.5: k = 2
    proto = protocols.build(protocols.parse_config({"name": "topk", "density": 0.5}))
    proto.setup(model, Comm(0, 1, CPU), lambda p: torch.optim.SGD(p, lr=1.0), None)
    model.weight.grad = torch.tensor([[1.0, -4.0, 0.5, 3.0]])
    proto.after_backward(proto.work)
    assert model.weight.grad.tolist() == [[0.0, -4.0, 0.0, 3.0]]
    assert proto.residual.tolist() == [1.0, 0.0, 0.5, 0.0]
    model.weight.grad = torch.tensor([[1.5, 0.0, 0.25, 0.0]])  # + residual: 2.5, 0, 0.75, 0
    proto.after_backward(proto.work)
    assert model.weight.grad.tolist() == [[2.5, 0.0, 0.75, 0.0]]
    assert proto.residual.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_refuses_a_density_outside_0_1():
    cls = protocols.get("topk")
    for density in (0.0, -0.1, 1.5):
        reason = cls.supports(cls.Config(density=density), None, 2)
        assert reason is not None and "protocol.density" in reason


def test_density_one_has_data_parallels_metrics_row_for_row(tmp_path):
    """Beyond the kit's equivalence (the same final model): the same metrics too, bytes
    and timings aside."""
    from suite.launch import execute
    from suite.record import RunDir

    short = {"train": {"data_epochs": 0.5, "eval_every": 0.25}}
    mine = kit_config("topk", results_dir=str(tmp_path), protocol_kw={"density": 1.0}, **short)
    ddp = kit_config("ddp", results_dir=str(tmp_path), **short)
    ddp = dataclasses.replace(ddp, model=mine.model, optim=mine.optim)
    rows = [RunDir(execute(cfg)["run_dir"]).read_metrics() for cfg in (mine, ddp)]
    skip = {"train_s", "compute_s", "comm_s", "bytes", "bytes_moved", "bytes_payload"}
    assert len(rows[0]) == len(rows[1]) >= 2
    for a, b in zip(*rows, strict=True):
        # top-k's own statistic: at full density nothing is left behind in the residual
        assert a.get("stats.residual_norm", 0.0) == 0.0
        assert {k: v for k, v in a.items() if k not in skip and not k.startswith("stats.")} == {
            k: v for k, v in b.items() if k not in skip
        }


@dataclasses.dataclass(frozen=True)
class RotatedConfig(commbench_topk.TopKConfig):
    name: str = "topk_rotated"


class Rotated(commbench_topk.TopK):
    """A subtly broken top-k: each rank sums the gathered gradients starting from its
    own. The same sum up to rounding, so rank 0 alone looks right, but at three ranks
    the replicas drift apart by rounding.

    Per step: as top-k.
    """

    name = "topk_rotated"
    Config = RotatedConfig
    equivalences = ()

    def after_backward(self, work):
        gather, me = self.comm.all_gather, self.comm.rank
        self.comm.all_gather = lambda t: (lambda p: p[me:] + p[:me])(gather(t))
        try:
            super().after_backward(work)
        finally:
            del self.comm.all_gather


def test_the_kit_catches_ranks_that_sum_in_different_orders(tmp_path):
    from suite.testing import check_replicas_agree

    check_replicas_agree("topk", tmp_path, workers=3)
    with pytest.raises(AssertionError, match="holds other values than rank 0"):
        check_replicas_agree("topk_rotated", tmp_path, workers=3)
