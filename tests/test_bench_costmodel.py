"""The round-time cost model: its arithmetic, its check against measurements, its projection."""

from __future__ import annotations

import json

import pytest

import protocols
from protocols.base import float_state, nbytes
from suite import costmodel as model_of_costs
from suite.bench import costmodel
from suite.costmodel import Link, predict
from suite.models.resnet import preact_resnet
from suite.report.comm import paper_info


def test_a_round_costs_compute_plus_bytes_over_bandwidth_plus_latency_per_hop():
    r = predict(0.01, 10, 1e6, Link(8e6, 1e-3), hops=4)  # 1 MB over 8 Mbit/s: 1 s
    assert (r.compute_s, r.transfer_s, r.latency_s) == pytest.approx((0.1, 1.0, 0.004))
    assert r.total_s == pytest.approx(1.104)
    times = [predict(0.01, 10, 1e6, Link(bw, 1e-4), 2).total_s for bw in (1e10, 1e9, 1e8, 1e7)]
    assert times == sorted(times) and len(set(times)) == 4  # slower link, longer round
    assert times[-1] - times[0] == pytest.approx(8e6 / 1e7 - 8e6 / 1e10)
    assert predict(0.01, 10, 0, Link(1e3, 0), 0).total_s == pytest.approx(0.1)


def test_hops_follow_the_ring_and_resist_adds_its_exchanges():
    assert [model_of_costs.hops("localsgd", s) for s in (2, 4, 8)] == [2, 6, 14]
    assert model_of_costs.hops("resist", 4) == model_of_costs.hops("ddp", 4) + 2


def _record(links: dict[str, float], fake_measured: bool) -> dict:
    """A cluster record of two protocols at 2 and 4 workers; measured round times are the
    model's own predictions when ``fake_measured``."""
    rows, probes = [], []
    for link, bw in links.items():
        for workers in (2, 4):
            probes.append(
                {"link": link, "workers": workers, "bandwidth_bps": bw, "latency_s": 1e-4}
            )
            for name, step_ms, mb in (("localsgd", 20.0, 2.6), ("resist", 12.0, 1.3)):
                loop_compute = 10 * step_ms
                messages = model_of_costs.hops(name, workers)
                r = predict(step_ms / 1e3, 10, mb * 1e6, Link(bw, 1e-4), messages)
                rows.append(
                    {
                        "link": link,
                        "workers": workers,
                        "protocol": name,
                        "local_steps": 10,
                        "compute_ms": loop_compute,
                        "MB_per_rank": mb,
                        "round_ms": 1e3 * r.total_s if fake_measured else 1.1 * 1e3 * r.total_s,
                    }
                )
    return {"rows": rows, "probes": probes, "ratios": []}


def test_the_check_finds_no_error_in_its_own_predictions_and_the_error_of_others():
    links = {"loopback": 8e9, "1gbit": 1e9, "100mbit": 1e8}
    exact = costmodel.check(_record(links, fake_measured=True))
    assert len(exact) == 12 and all(c["error_pct"] == pytest.approx(0) for c in exact)
    off = costmodel.check(_record(links, fake_measured=False))  # measured 10 % slower
    assert [c["error_pct"] for c in off] == pytest.approx([-100 / 11] * 12)
    by_link = {c["link"]: c["predicted_ms"] for c in exact if c["protocol"] == "localsgd"}
    assert by_link["loopback"] < by_link["1gbit"] < by_link["100mbit"]


def test_per_rank_bytes_come_from_each_protocols_own_accounting():
    model = preact_resnet(34, 10, 3, 1 / 16, "batch")
    info = paper_info(model)
    theta = nbytes(float_state(model))
    local = protocols.parse_config({"name": "localsgd"})
    per_rank = model_of_costs.paper_bytes_per_rank
    assert per_rank("localsgd", local, info, 2) == theta  # ring: ×1
    assert per_rank("localsgd", local, info, 4) == 1.5 * theta
    resist = protocols.parse_config({"name": "resist"})
    assert per_rank("resist", resist, info, 2) < theta


def test_quick_mode_projects_a_small_model_and_checks_given_measurements(tmp_path):
    measured = tmp_path / "cluster.json"
    measured.write_text(json.dumps(_record({"loopback": 8e9, "1gbit": 1e9}, True)))
    fast, slow = tmp_path / "fast.json", tmp_path / "slow.json"
    quick = ["--quick", "--measurements", str(measured)]
    costmodel.main([*quick, "--out", str(fast)])
    costmodel.main([*quick, "--gbit", "0.1", "--out", str(slow)])
    fast_rec, slow_rec = json.loads(fast.read_text()), json.loads(slow.read_text())
    assert len(fast_rec["rows"]) == 8 and fast_rec["assumptions"]["link_gbit"] == 10.0
    by = {(r["workers"], r["protocol"]): r for r in fast_rec["projection"]}
    for workers in (2, 4):
        resist, local = by[(workers, "resist")], by[(workers, "localsgd")]
        assert resist["round_compute_s"] < local["round_compute_s"]
        assert resist["MB_per_rank_per_round"] < local["MB_per_rank_per_round"]
        assert local["speedup_vs_localsgd"] == 1.0
    for a, b in zip(fast_rec["projection"], slow_rec["projection"], strict=True):
        assert b["round_comm_s"] > a["round_comm_s"] and b["train_s"] > a["train_s"]
