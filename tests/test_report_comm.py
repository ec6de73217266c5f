"""The paper's communication table: generated, and equal to what real runs record."""

import pytest

import protocols
from protocols.resist import PAPER_MIN_DEPTH
from suite.architectures import PreActResNetConfig
from suite.config import LaunchConfig, RunConfig, TrainConfig
from suite.datasources import data_config
from suite.launch import execute
from suite.report.__main__ import main as report_main
from suite.report.comm import comm_per_round, paper_model


def test_table_follows_the_papers_formulas():
    df = comm_per_round()
    model = paper_model()
    params = sum(p.numel() for p in model.parameters())
    blocks = model.partitionable_blocks()
    block = sum(p.numel() for p in blocks[0].parameters())
    assert len(blocks) == 22
    for row in df.itertuples():
        s = row.workers
        if row.protocol == "localsgd":
            assert row.bytes_per_round == 2 * s * params * 4
        else:
            shared = params - 22 * block
            depth = max(22 // s, PAPER_MIN_DEPTH[s])
            assert row.bytes_per_round == 2 * s * shared * 4 + 2 * s * depth * block * 4
    # ResIST communicates less than local SGD at every worker count.
    wide = df.pivot(index="workers", columns="protocol", values="GB_per_round")
    assert (wide["resist"] < wide["localsgd"]).all()


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_report_writes_the_table(tmp_path):
    report_main(["--out", str(tmp_path)])
    md = (tmp_path / "tables" / "comm_per_round.md").read_text()
    assert "| local SGD | 0.662 | 1.325 | 2.649 |" in md
    assert r"\begin{tabular}" in (tmp_path / "tables" / "comm_per_round.tex").read_text()


@pytest.mark.slow  # real runs of the paper's model: the slow tier (CI runs it)
@pytest.mark.parametrize("workers", [2, 4, 8])
def test_a_real_run_of_the_papers_model_records_the_table_bytes(tmp_path, workers):
    table = comm_per_round((workers,))
    for name in ("localsgd", "resist"):
        values = {"name": name, "local_steps": 1}
        if name == "resist":
            values["min_depth"] = PAPER_MIN_DEPTH[workers]
        # The paper's model (41M parameters, 100 classes); bytes do not depend on the
        # input, so small synthetic CIFAR-100-shaped images keep the run short.
        cfg = RunConfig(
            protocol=protocols.parse_config(values),
            workers=workers,
            model=PreActResNetConfig(depth=101, width=1.0, bn="batch"),
            data=data_config(
                name="synthetic",
                num_train=64,
                num_test=4,
                image_size=8,
                num_classes=100,
                batch_size=2,
                eval_batch_size=4,
            ),
            train=TrainConfig(data_epochs=2 * 2 * workers / 64, eval_every=100),
            launcher=LaunchConfig(device="cpu", progress=False),
            results_dir=str(tmp_path),
        )
        summary = execute(cfg)
        assert summary["status"] == "completed" and summary["rounds"] == 2, summary
        expected = int(table[table.protocol == name].bytes_per_round.iloc[0])
        assert summary["bytes"] == 2 * expected
