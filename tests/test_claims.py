"""The claims table: Welch intervals checked against scipy's own Welch test, ratios on
the log scale, the verdict rule, plugin claim files, and the table on real run folders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from suite.report import claims as C
from suite.report.load import load_runs

FIXTURES = Path(__file__).parent / "fixtures" / "results"


def test_welch_interval_equals_scipys_welch_test():
    a = np.array([0.91, 0.93, 0.92, 0.95])
    b = np.array([0.90, 0.94, 0.89])
    diff, lo, hi = C.welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert (lo, hi) == pytest.approx((ref.low, ref.high))


def test_ratio_interval_is_welch_on_the_logs():
    base, mine = np.array([10.0, 12.0, 11.0]), np.array([5.0, 6.5, 5.5])
    est = C._ratio(base, mine)
    ref = stats.ttest_ind(np.log(base), np.log(mine), equal_var=False).confidence_interval()
    geo = math.exp(np.log(base).mean()) / math.exp(np.log(mine).mean())
    assert est.value == pytest.approx(geo)
    assert (est.low, est.high) == pytest.approx((math.exp(ref.low), math.exp(ref.high)))


@pytest.mark.parametrize(
    ("low", "high", "op", "expected"),
    [
        (-0.5, 0.8, ">=", "holds"),
        (-1.5, -1.1, ">=", "does not hold"),
        (-1.5, 0.5, ">=", "inconclusive at this n"),
        (0.2, 0.9, "<=", "holds"),
        (1.2, 1.4, "<=", "does not hold"),
        (math.nan, math.nan, ">=", "inconclusive at this n"),
    ],
)
def test_verdict_reads_the_whole_interval(low, high, op, expected):
    threshold = -1.0 if op == ">=" else 1.0
    assert C.verdict(C.Estimate(0.0, low, high), op, threshold) == expected


def test_one_seed_a_side_has_no_interval():
    diff, lo, hi = C.welch(np.array([0.9]), np.array([0.8, 0.85]))
    assert diff == pytest.approx(0.075) and math.isnan(lo) and math.isnan(hi)


def _claim(**over: str) -> pd.Series:
    row = dict.fromkeys(C.COLUMNS, "")
    row |= {"id": "x", "protocol": "ddp", "baseline": "localsgd", "model": "*", "op": ">="}
    row |= {"quantity": "acc_diff", "threshold": "-1.0", "claim": "c", "paper_value": "p"}
    return pd.Series(row | over)


def test_table_on_real_run_folders_pairs_like_groups_and_marks_toy_scale():
    results = load_runs(FIXTURES)
    claims = pd.DataFrame([_claim(), _claim(id="t", quantity="time_ratio", threshold="1")])
    table, _, _ = C.claims_table(results.runs, results.metrics, claims)
    frame = table.frame
    assert list(frame.claim) == ["x", "t"]
    assert set(frame.data) == {"digits (toy scale)"}
    done = results.runs[results.runs.status == "completed"]
    ddp = done[done.protocol == "ddp"].final_test_acc.to_numpy(float)
    local = done[done.protocol == "localsgd"].final_test_acc.to_numpy(float)
    # Which seeds completed is read from the fixtures themselves, not assumed.
    ref = stats.ttest_ind(ddp, local, equal_var=False).confidence_interval()
    assert frame.measured[0] == f"{100 * (ddp.mean() - local.mean()):+.2f} pp"
    assert frame["95% interval"][0] == f"[{100 * ref.low:+.2f}, {100 * ref.high:+.2f}]"
    assert frame.n[0] == f"{len(ddp)} vs {len(local)} (local SGD)"  # the baseline's title


def test_a_claim_without_runs_says_not_run():
    results = load_runs(FIXTURES)
    claims = pd.DataFrame([_claim(protocol="resist")])
    table, _, _ = C.claims_table(results.runs, results.metrics, claims)
    assert list(table.frame.verdict) == ["not run"]


def test_threshold_may_be_a_multiple_of_a_config_key():
    mine = pd.DataFrame({"protocol.local_steps": [20, 20]})
    assert C._threshold(_claim(threshold="0.9*protocol.local_steps"), mine) == 18.0
    assert C._threshold(_claim(threshold="protocol.local_steps"), mine) == 20.0


def test_a_plugin_adds_claims_and_a_broken_file_is_listed(tmp_path, monkeypatch):
    good = tmp_path / "claims.csv"
    good.write_text(",".join(C.COLUMNS[:-1]) + "\nmine,p,c,v,acc_diff,topk,ddp,*,,>=,-1,\n")

    class EP:
        def __init__(self, name: str, path: Path) -> None:
            self.name, self.value, self.path = name, f"pkg:{name}", path

        def load(self) -> Path:
            return self.path

    def entry_points(group: str) -> list[EP]:
        assert group == "commbench.claims"
        return [EP("good", good), EP("bad", tmp_path / "absent.csv")]

    monkeypatch.setattr(C.metadata, "entry_points", entry_points)
    frame, problems = C.load_claims()
    assert "mine" in set(frame.id) and "resist-acc" in set(frame.id)
    assert (
        len(problems) == 1 and problems[0][0].startswith("bad") and "absent.csv" in problems[0][1]
    )
