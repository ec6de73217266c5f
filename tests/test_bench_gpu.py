"""The GPU check's --smoke mode on the CPU: the same code paths, so it cannot rot before
the next machine with a GPU runs it for real."""

import json

import pytest

from suite.bench import gpu


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_smoke_writes_every_part_of_the_record(tmp_path):
    out = tmp_path / "gpu.json"
    gpu.main(["--smoke", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["smoke"] and record["device"] == "cpu"
    modes = {r["mode"]: r for r in record["rows"]}
    for mode in ("fp32", "bf16 autocast", "channels-last", "bf16 + channels-last"):
        assert modes[mode]["images_per_s"] > 0 and modes[mode]["tflops"] > 0, modes[mode]
    assert "not tried in --smoke" in modes["bf16 + channels-last + compile"]["error"]
    ratio = record["resist_compute_ratio"]
    assert ratio["blocks"] == 6 and ratio["of"] == 22  # [6, 6, 5, 5]: the largest share
    assert 0 < ratio["implied_ratio"] < 1 and ratio["measured_ratio"] > 0
    runs = record["two_ranks_one_device"]
    assert [r["protocol"] for r in runs] == ["ddp", "localsgd", "resist"]
    assert all(r["status"] == "completed" and r["bytes_as_stated"] for r in runs), runs
    assert "no GPU" in record["nccl"]["skipped"]
    memory = {r["protocol"]: r for r in record["peak_memory_4_workers"]}
    assert all(
        m["status"] == "completed" and m["peak_memory_bytes_per_rank"] > 0 for m in memory.values()
    )
