"""Protocol statistics (``Protocol.stats``) in every metrics row and in the summary."""

import dataclasses

from helpers import tiny_config

import protocols
from suite.launch import execute
from suite.record import RunDir


def test_every_metrics_row_carries_the_protocols_stats_largest_over_ranks(tmp_path):
    import counting  # noqa: F401 - registers the test-only protocol

    cfg = dataclasses.replace(
        tiny_config("ddp", 2, results_dir=str(tmp_path)),
        protocol=protocols.parse_config({"name": "counting"}),
    )
    summary = execute(cfg)
    assert summary["status"] == "completed", summary
    rows = RunDir(summary["run_dir"]).read_metrics()
    assert len(rows) == 2
    for row in rows:
        assert row["stats.rounds_ended"] == row["round"]  # as of that evaluation
        assert row["stats.rank"] == 1  # the largest over ranks 0 and 1
    assert summary["protocol_stats"] == {"rank": 1.0, "rounds_ended": float(summary["rounds"])}
