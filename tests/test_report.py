"""The report on a small committed fixture (tests/fixtures/results), checked by hand.

Fixture: localsgd seeds 0, 1 completed (final acc 0.90, 0.80; times 10, 12 s), seed 2
diverged, seed 3 incomplete; ddp seeds 0, 1 completed (0.95, 0.93; 5.5 s each), seed 2
failed; plus one folder with a corrupt summary.json and one without config.yaml.
"""

import filecmp
import os
import shutil
from pathlib import Path

import pytest

from suite.report.__main__ import generate
from suite.report.__main__ import main as report_main
from suite.report.load import load_runs

FIXTURE = Path(__file__).parent / "fixtures" / "results"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper")
    written, results = generate([str(FIXTURE)], out, [], "localsgd", 0.9)
    return out, written, results


def _row(md: str, *cells: str) -> str:
    lines = [line for line in md.splitlines() if all(f"| {c} |" in line for c in cells)]
    assert len(lines) == 1, (cells, md)
    return lines[0]


def test_tidy_tables_and_problems():
    results = load_runs(FIXTURE)
    assert sorted(results.runs.status) == sorted(
        ["completed"] * 4 + ["failed", "diverged", "incomplete"]
    )
    # one row per run x evaluation: 3+3+3+3 completed, 1 failed, 2 diverged, 1 incomplete
    assert len(results.metrics) == 16
    assert {"run", "protocol", "workers", "seed", "status", "test_acc", "train_s"} <= set(
        results.metrics.columns
    )
    problems = dict(results.problems)
    assert "summary.json is corrupt" in problems[str(FIXTURE / "digits-ddp-w2-s9")]
    assert problems[str(FIXTURE / "digits-ddp-w2-s8")] == "config.yaml is missing"


def test_accuracy_matches_a_hand_computation(report):
    md = (report[0] / "tables" / "accuracy.md").read_text()
    # localsgd: mean(90, 80) = 85.00, sample std = 7.07, 95% t-interval 12.706*7.07/sqrt(2)
    row = _row(md, "local SGD")  # the protocols' titles
    assert "| 85.00 ± 7.07 | ± 63.53 | 2 | 1 diverged, 1 incomplete |" in row
    assert "| 94.00 ± 1.41 | ± 12.71 | 2 | 1 failed |" in _row(md, "data parallel")


def test_time_and_speedups_match_a_hand_computation(report):
    md = (report[0] / "tables" / "train_time.md").read_text()
    assert "| 11.0 ± 1.4 | 2 | 1.00× (baseline) |" in _row(md, "local SGD", "2")
    assert "| 5.50 ± 0.00 | 2 | 2.00× |" in _row(md, "data parallel", "2")  # 11 / 5.5, 3 digits
    assert "| geo. mean of 1 of 1 rows |  | 2.00× |" in _row(md, "all", "data parallel")
    target = (report[0] / "tables" / "time_to_target.md").read_text()
    # AlgoPerf: a run that never reaches 90 % counts as ∞. localsgd: only seed 0 reaches it
    # (at 10 s) of 4 runs, so the median is ∞; ddp: 3 s, 5.5 s and a failed seed: 5.5 s.
    assert "| ∞ (not reached) | 1/4 | 1.00× (baseline) |" in _row(target, "local SGD", "2")
    # Only ddp reaches it: a lower bound from localsgd's training times without reaching
    # it (10, 12, 4 and 0 s for the incomplete run: median 7 s), 7 / 5.5 = 1.27.
    assert "| 5.50 | 2/3 | >1.27× |" in _row(target, "data parallel", "2")


def test_communication_and_failed_runs_are_shown(report):
    comm = (report[0] / "tables" / "comm_recorded.md").read_text()
    # MB per round, moved (the suite's convention) then paper, to 3 significant digits.
    assert "| 10.0 | 200 | 200 |" in _row(comm, "local SGD")
    assert "| 1.0 | 5.00 | 5.00 |" in _row(comm, "data parallel")
    runs = (report[0] / "tables" / "runs.md").read_text()
    assert "| failed |" in _row(runs, "digits-ddp-w2-s2") and "SIGKILL" in runs
    assert "| diverged |" in _row(runs, "digits-localsgd-w2-s2")
    assert "| incomplete |" in _row(runs, "digits-localsgd-w2-s3")
    index = (report[0] / "README.md").read_text()
    assert "digits-ddp-w2-s9" in index and "summary.json is corrupt" in index


def test_every_table_and_figure_is_produced(report):
    out, written, _ = report
    names = {p.relative_to(out).as_posix() for p in written}
    for table in (
        "accuracy",
        "train_time",
        "time_to_target",
        "comm_recorded",
        "runs",
        "reported_vs_reproduced",
        "comm_per_round",
        "claims",
    ):
        assert {f"tables/{table}.md", f"tables/{table}.tex"} <= names
    for fig in ("accuracy_vs_time", "accuracy_vs_communication", "round_time_breakdown", "scaling"):
        assert {f"figures/{fig}.png", f"figures/{fig}.pdf"} <= names
        assert (out / "figures" / f"{fig}.png").stat().st_size > 10_000
    assert {"data/runs.csv", "data/metrics.csv", "README.md"} <= names
    reported = (out / "tables" / "reported_vs_reproduced.md").read_text()
    assert "| 92.36 ± 0.01 | not run | — |" in reported  # no CIFAR run in the fixture


def test_same_results_give_the_same_files(report, tmp_path):
    report_main(["--results", str(FIXTURE), "--out", str(tmp_path)])
    first = report[0]
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(first, tmp_path, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors


def test_missing_results_folder_is_reported_not_fatal(tmp_path):
    _, results = generate(
        [str(tmp_path / "nowhere"), str(FIXTURE)], tmp_path / "out", [], "localsgd", 0.9
    )
    assert ("results folder does not exist") in dict(results.problems).values()
    assert len(results.runs) == 7


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_committed_paper_is_what_the_reference_results_generate(tmp_path):
    """paper/ is generated, never edited: its text files equal a fresh regeneration."""
    repo = Path(__file__).parent.parent
    cwd = os.getcwd()
    os.chdir(repo)  # the committed files name the results folder relative to the repo
    try:
        generate(["results/reference"], tmp_path, [], "localsgd", 0.9)
    finally:
        os.chdir(cwd)
    committed = sorted(
        p.relative_to(repo / "paper")
        for p in (repo / "paper").rglob("*")
        if p.suffix in (".md", ".tex", ".csv")
    )
    assert committed, "paper/ has no generated tables"
    for rel in committed:
        assert (repo / "paper" / rel).read_text() == (tmp_path / rel).read_text(), (
            f"paper/{rel} is stale: run python -m suite.report --results results/reference"
        )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", ["typo", "empty", "all corrupt", "filtered out"])
def test_nothing_readable_is_refused_and_out_is_left_untouched(tmp_path, capsys, case):
    out = tmp_path / "paper"
    (out / "tables").mkdir(parents=True)
    (out / "tables" / "accuracy.md").write_text("the last good report\n")
    (out / "notes.txt").write_text("mine\n")
    before = _snapshot(out)
    results = tmp_path / "results"
    only = []
    if case == "typo":
        results = tmp_path / "resutls"
    elif case == "empty":
        results.mkdir()
    elif case == "all corrupt":
        for name, text in (("run-a", "{not json"), ("run-b", "[]")):
            shutil.copytree(FIXTURE / "digits-ddp-w2-s0", results / name)
            (results / name / "summary.json").write_text(text)
    else:
        results = FIXTURE
        only = ["--only", "cifar*"]
    with pytest.raises(SystemExit) as stop:
        report_main(["--results", str(results), "--out", str(out), *only])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no run could be read"), err
    assert str(results) in err[0] and f"{out} is left as it was" in err[0]
    if case == "typo":
        assert "results folder does not exist" in err[0]
    if case == "all corrupt":
        assert "summary.json is corrupt" in err[0] and "not a JSON object" in err[0]
    if case == "filtered out":
        assert "--only cifar*" in err[0]
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_summary_that_is_not_an_object_is_a_problem_not_fatal(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(FIXTURE, root)
    for name, text in (("null", "null"), ("list", "[1, 2]")):
        shutil.copytree(root / "digits-ddp-w2-s0", root / f"digits-ddp-w2-{name}")
        (root / f"digits-ddp-w2-{name}" / "summary.json").write_text(text)
    results = load_runs(root)
    assert len(results.runs) == 7
    problems = dict(results.problems)
    assert problems[str(root / "digits-ddp-w2-null")] == "summary.json is not a JSON object (null)"
    assert problems[str(root / "digits-ddp-w2-list")] == "summary.json is not a JSON object (list)"


def test_out_is_replaced_only_when_the_whole_report_is_written(tmp_path, monkeypatch):
    from suite.report import figures

    out = tmp_path / "paper"
    (out / "tables").mkdir(parents=True)
    (out / "tables" / "accuracy.md").write_text("the last good report\n")
    (out / "notes.txt").write_text("mine\n")
    before = _snapshot(out)

    def broken(*args, **kwargs):
        raise RuntimeError("a figure failed")

    monkeypatch.setattr(figures, "scaling", broken)
    with pytest.raises(RuntimeError, match="a figure failed"):
        report_main(["--results", str(FIXTURE), "--out", str(out)])
    assert _snapshot(out) == before  # nothing half-written
    assert [p.name for p in tmp_path.iterdir()] == ["paper"]  # no temporary folder left
    monkeypatch.undo()
    report_main(["--results", str(FIXTURE), "--out", str(out)])
    assert (out / "notes.txt").read_text() == "mine\n"  # not the report's: kept
    assert "| local SGD |" in (out / "tables" / "accuracy.md").read_text()
    assert (out / "figures" / "scaling.png").exists() and (out / "README.md").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["paper"]


def test_a_torn_last_metrics_line_keeps_the_run_and_is_noted(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(FIXTURE / "digits-ddp-w2-s0", root / "digits-ddp-w2-s0")
    metrics = root / "digits-ddp-w2-s0" / "metrics.jsonl"
    rows = len(metrics.read_text().splitlines())
    with open(metrics, "a") as f:
        f.write('{"round": 4, "step": 40, "test_a')  # a write cut short
    results = load_runs(root)
    assert list(results.runs.status) == ["completed"] and len(results.metrics) == rows
    assert results.problems == [
        (
            str(root / "digits-ddp-w2-s0"),
            f"metrics.jsonl line {rows + 1} (the last) is torn and was ignored; the run is kept",
        )
    ]
    (root / "digits-ddp-w2-s0" / "metrics.jsonl").write_text('{"round": 1\n{"round": 2}\n')
    assert (
        "metrics.jsonl line 1 is corrupt"
        in dict(load_runs(root).problems)[str(root / "digits-ddp-w2-s0")]
    )
