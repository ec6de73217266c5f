"""Layer-parallel training with AuxNets: cuts, locality of gradients, coupling, learning."""

import pytest
import torch
from helpers import problem, run_ranks, set_up, tiny_config, train_rank

import protocols
from protocols.auxnet import AuxNet, balanced_cuts
from suite.data import TrainBatches, load_dataset
from suite.datasources import data_config
from suite.dist import Comm
from suite.launch import execute
from suite.models.resnet import preact_resnet
from suite.train import train

CPU = torch.device("cpu")


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7])
def test_balanced_cuts_cover_every_unit_once(parts):
    costs = [5, 1, 1, 1, 9, 2, 2, 2, 3, 1]
    cuts = balanced_cuts(costs, parts)
    assert cuts[0] == 0 and len(cuts) == parts and cuts == sorted(set(cuts))
    pieces = [costs[a:b] for a, b in zip(cuts, [*cuts[1:], len(costs)], strict=True)]
    assert (
        all(pieces) and [c for piece in pieces for c in piece] == costs
    )  # consecutive, non-empty, complete
    assert max(map(sum, pieces)) <= sum(costs) / parts + max(costs)


def _info(model):
    return problem(model, image_size=8)


def _setup(rank, comm, **cfg):
    torch.manual_seed(0)
    model = preact_resnet(34, 10, in_channels=1, width=1 / 16)
    proto = protocols.build(protocols.parse_config({"name": "auxnet", **cfg}))
    set_up(proto, model, comm, _info(model))
    return model, proto


def _cuts_and_gradients(rank, comm):
    model, proto = _setup(rank, comm)
    x = torch.randn(4, 1, 8, 8)
    chained = x
    for module in proto.modules_:
        chained = module(chained)
    mine = {id(p) for p in proto.module.parameters()}
    aux = {id(p) for p in proto.aux.parameters()} if proto.aux is not None else set()
    owned = [{id(p) for p in m.parameters()} for m in proto.modules_]
    batches = TrainBatches(load_dataset(data_config()), 0, 1, 16, "disjoint", 0, CPU)
    xb, yb = next(batches)
    work = proto.begin_round(0)
    work.optimizer.zero_grad()
    work.loss(xb, yb).backward()
    aux_params = list(proto.aux.parameters()) if proto.aux is not None else []
    touched = {
        id(p)
        for p in [*model.parameters(), *aux_params]
        if p.grad is not None and p.grad.abs().sum() > 0
    }
    return {
        "chain_equals_serial": torch.equal(chained, model(x)),
        "disjoint": all(a.isdisjoint(b) for i, a in enumerate(owned) for b in owned[i + 1 :]),
        "complete": set().union(*owned) == {id(p) for p in model.parameters()},
        "touched_only_mine": touched <= mine | aux,
        "module_grad_fraction": len(mine & touched) / len(mine),
        "aux_has_grads": aux <= touched,
        "bytes": comm.bytes_paper,
        "cuts": proto.cuts,
    }


@pytest.mark.parametrize("workers", [2, 3])
def test_cuts_cover_the_network_and_gradients_stay_local(tmp_path, workers):
    results = run_ranks(_cuts_and_gradients, workers, tmp_path)
    for rank, r in enumerate(results):
        assert r["chain_equals_serial"] and r["disjoint"] and r["complete"], (rank, r)
        assert r["touched_only_mine"], rank  # no gradient leaks into another module
        assert r["aux_has_grads"] and r["module_grad_fraction"] > 0.9, (rank, r)
        assert r["bytes"] > 0
    assert all(r["cuts"] == results[0]["cuts"] for r in results)


def _gap_after(rank, comm, growth, steps):
    _, proto = _setup(rank, comm, penalty=1.0, penalty_growth=growth)
    batches = TrainBatches(load_dataset(data_config()), 0, 1, 16, "disjoint", 0, CPU)
    gaps = []
    for r in range(steps):
        work = proto.begin_round(r)
        x, y = next(batches)
        loss = work.loss(x, y)
        work.optimizer.zero_grad()
        loss.backward()
        proto.after_backward(work)
        work.optimizer.step()
        proto.end_round(r, work)
        gaps.append(float(proto.gap))
    return gaps


def test_a_growing_penalty_drives_modules_to_agree(tmp_path):
    """‖h_1 − z_2‖² (module 1's output vs module 2's auxiliary input) shrinks as ρ grows."""
    gaps = run_ranks(_gap_after, 2, tmp_path, 1.05, 60)[0]
    assert sum(gaps[-10:]) < 0.5 * sum(gaps[:10])


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
@pytest.mark.parametrize("workers", [2, 4])
def test_real_runs_learn(tmp_path, workers):
    cfg = tiny_config(
        "auxnet",
        workers,
        results_dir=str(tmp_path),
        model={"depth": 34},
        train={"data_epochs": 6, "eval_every": 2},
    )
    summary = execute(cfg)
    assert summary["status"] == "completed", summary
    assert summary["final_test_acc"] > 0.3  # chance: 0.1
    stats = summary["protocol_stats"]
    assert stats["forward_s"] > 0 and stats["backward_s"] > 0 and stats["aux_s"] > 0


def test_supports_refuses():
    from suite.models.mlp import MLP

    cfg = AuxNet.Config()
    assert "use model=preact_resnet" in AuxNet.supports(cfg, _info(MLP(64, 8, 2, 10)), 2)
    small = preact_resnet(18, 10, width=1 / 16)  # stem + 8 blocks + head = 10 units
    assert "only 10 units" in AuxNet.supports(cfg, _info(small), 11)
    bad = AuxNet.Config(cuts=(0, 5, 3))
    assert "increasing unit indices" in AuxNet.supports(bad, _info(small), 3)


@pytest.mark.parametrize("workers", [2, 3])
def test_serial_phase_is_backprop_through_the_chained_modules(tmp_path, workers):
    """A warm-up covering the whole budget is ordinary training, pipelined over ranks."""
    train_kw = {"data_epochs": 0.3, "eval_every": 0.3, "channels_last": False}  # see AuxNet
    common = {"model": {"depth": 34}, "train": train_kw}
    cfg = tiny_config("auxnet", workers, protocol_kw={"warmup_epochs": 100.0}, **common)
    parallel = run_ranks(train_rank, workers, tmp_path, cfg)[0]
    serial = train(tiny_config("single", 1, **common), Comm(0, 1, CPU), CPU)
    assert parallel["summary"]["steps"] == serial.summary["steps"] >= 10
    assert parallel["summary"]["bytes"] > 0
    for key, value in serial.model.state_dict().items():
        assert torch.allclose(parallel["state"][key], value, atol=1e-5), key


def test_z_update_is_a_gradient_step_on_the_augmented_lagrangian():
    """z_target against autograd of the per-sample objective written here:
    J_b(z_b) = g(z_b) + mean_f[λ·(h_b − z_b)] + ρ/2·mean_f (h_b − z_b)²."""
    from protocols.auxnet import z_target

    torch.manual_seed(0)
    batch, shape, rho, step = 5, (3, 4, 4), 2.5, 0.3
    z = torch.randn(batch, *shape, requires_grad=True)
    h_prev, lam = torch.randn(batch, *shape), torch.randn(*shape)
    loss = torch.sin(z).flatten(1).sum(1).mean()  # the module's batch-mean loss
    (grad,) = torch.autograd.grad(loss, z)
    zz = z.detach().clone().requires_grad_(True)
    per_sample = (
        torch.sin(zz).flatten(1).sum(1)
        + (lam * (h_prev - zz)).flatten(1).mean(1)
        + 0.5 * rho * (h_prev - zz).pow(2).flatten(1).mean(1)
    )
    (expected_grad,) = torch.autograd.grad(per_sample.sum(), zz)
    expected = z.detach() - step * expected_grad
    assert torch.allclose(z_target(z.detach(), grad, h_prev, lam, rho, step), expected, atol=1e-6)
    # coupling=penalty: no multiplier, the same step with λ = 0
    no_lam = z.detach() - step * (expected_grad + lam / z[0].numel())
    assert torch.allclose(z_target(z.detach(), grad, h_prev, None, rho, step), no_lam, atol=1e-6)


def _lagrangian_steps(rank, comm, steps):
    import protocols.auxnet as aux

    _, proto = _setup(rank, comm, coupling="lagrangian", penalty=2.0)
    seen = []
    real = aux.z_target

    def spy(z, grad, h_prev, lam_prev, rho, step):
        seen.append({"lam_prev": lam_prev.clone(), "h_prev": h_prev.clone()})
        return real(z, grad, h_prev, lam_prev, rho, step)

    aux.z_target = spy
    batches = TrainBatches(load_dataset(data_config()), 0, 1, 16, "disjoint", 0, CPU)
    lams, gaps, first_bytes = [], [], None
    for r in range(steps):
        work = proto.begin_round(r)
        x, y = next(batches)
        before = None if proto.multiplier is None else proto.multiplier.clone()
        loss = work.loss(x, y)
        if first_bytes is None:
            first_bytes = comm.bytes_paper
        if before is not None:
            lams.append((before, proto.multiplier.clone()))
        work.optimizer.zero_grad()
        loss.backward()
        proto.after_backward(work)
        work.optimizer.step()
        proto.end_round(r, work)
        gaps.append(float(proto.gap))
    shapes = {"in": proto.in_shape, "out": proto.out_shape}
    return {"lams": lams, "seen": seen, "bytes": first_bytes, "shapes": shapes, "rho": proto.rho}


def test_lagrangian_multiplier_is_used_on_both_sides_and_travels(tmp_path):
    r0, r1 = run_ranks(_lagrangian_steps, 2, tmp_path, 4)
    assert len(r0["lams"]) == 4 and len(r1["seen"]) == 4
    assert torch.count_nonzero(r0["lams"][0][0]) == 0  # λ starts at 0
    for t in range(4):
        before, after = r0["lams"][t]
        # rank 1's z-step in step t used exactly the λ rank 0 used in its loss in step t
        assert torch.equal(r1["seen"][t]["lam_prev"], before), t
        if t + 1 < 4:
            assert torch.equal(r0["lams"][t + 1][0], after)  # dual ascent carried over
    assert any(torch.count_nonzero(a) > 0 for _, a in r0["lams"])  # the multiplier moves
    # One step's exchange: h_1 and λ_1 up (rank 0 sends), z_2 down (rank 1 sends), fp32;
    # Comm counts each point-to-point transfer once, at its sender.
    batch, feat = 16, torch.Size(r0["shapes"]["out"]).numel()
    assert r0["bytes"] == (batch * feat + feat) * 4 and r1["bytes"] == batch * feat * 4
