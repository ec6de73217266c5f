"""The report never pools unlike runs: groups, like-for-like speedups, duplicate seeds,
time to target as AlgoPerf counts it, figures and LaTeX a reviewer accepts.

Run folders are written here by hand (config, summary, metrics), so every expected
number is computed in the test from the rule, not read back from the report's code.
"""

import dataclasses
import json
import math
import re
from pathlib import Path

import pandas as pd
import yaml

import protocols
import protocols as registry
from suite.config import RunConfig
from suite.report import analysis
from suite.report.__main__ import generate
from suite.report.figures import style
from suite.report.load import load_runs


def write_run(
    root: Path,
    protocol: str = "localsgd",
    seed: int = 0,
    name: str | None = None,
    curve: tuple[tuple[float, float], ...] = ((1.0, 0.5), (2.0, 0.8)),
    status: str = "completed",
    **changes,
) -> str:
    """A run folder as the suite writes it; ``curve``: (train_s, test_acc) per evaluation."""
    proto = {"name": protocol, **changes.pop("protocol_kw", {})}
    cfg = RunConfig(protocol=protocols.parse_config(proto), seed=seed)
    for key, value in changes.items():
        cfg = dataclasses.replace(cfg, **{key: dataclasses.replace(getattr(cfg, key), **value)})
    folder = root / (name or cfg.run_name())
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict()))))
    rows = [
        {"round": i + 1, "step": 10 * (i + 1), "train_s": t, "test_acc": a, "bytes": 100 * (i + 1)}
        | {"bytes_moved": 100 * (i + 1)}
        for i, (t, a) in enumerate(curve)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t, acc = curve[-1]
    summary = {
        "status": status,
        "final_test_acc": acc,
        "train_s": t,
        "compute_s": t / 2,
        "comm_s": t / 2,
        "bytes": 100 * len(curve),
        "bytes_moved": 100 * len(curve),
        "steps": 10 * len(curve),
        "rounds": len(curve),
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder.name


def _rows(table: analysis.Table, **where) -> pd.DataFrame:
    frame = table.frame
    for key, value in where.items():
        frame = frame[frame[key].astype(str) == str(value)]
    return frame


def test_every_semantic_key_is_a_column_and_groups_split_on_it(tmp_path):
    write_run(tmp_path, seed=0, optim={"lr": 0.05}, curve=((1.0, 0.9),))
    write_run(tmp_path, seed=0, optim={"lr": 0.5}, curve=((1.0, 0.1),))
    runs = load_runs(tmp_path).runs
    for column in ("optim.lr", "protocol.local_steps", "train.data_epochs", "data.batch_size"):
        assert column in runs.columns
    assert runs["group"].nunique() == 2  # same seed, different lr: two groups, never n=2
    table = analysis.accuracy_table(runs)
    assert len(table.frame) == 2 and (table.frame["n"] == "1").all()
    # The varying key is shown, next to its optimizer, as a protocol's knobs are.
    assert sorted(table.frame["optim"]) == ["sgd (lr=0.05)", "sgd (lr=0.5)"]
    assert sorted(table.frame["test acc (%)"]) == ["10.00", "90.00"]
    assert "train.data_epochs=10" in table.common and "lr=" not in table.common


def test_speedups_only_against_a_like_baseline(tmp_path):
    """A 2-data-epoch resist run has no localsgd baseline at its budget: no speedup, and
    never one against the 10-data-epoch localsgd group."""
    for seed in (0, 1):
        write_run(tmp_path, "localsgd", seed, train={"data_epochs": 10.0}, curve=((20.0, 0.9),))
        write_run(tmp_path, "resist", seed, train={"data_epochs": 10.0}, curve=((10.0, 0.9),))
        write_run(tmp_path, "resist", seed, train={"data_epochs": 2.0}, curve=((2.0, 0.7),))
    runs = load_runs(tmp_path).runs
    table = analysis.time_table(runs, "localsgd")
    long = _rows(table, protocol="ResIST", **{"train.data_epochs": "10"})
    short = _rows(table, protocol="ResIST", **{"train.data_epochs": "2"})
    assert list(long.speedup) == ["2.00×"]  # 20 s / 10 s, same budget
    assert list(short.speedup) == ["no local SGD run with these settings"]
    geo = _rows(table, data="all")
    assert list(geo.speedup) == ["2.00×"]  # the geometric mean takes like pairs only


def test_protocol_knobs_do_not_break_the_baseline_but_show(tmp_path):
    write_run(tmp_path, "localsgd", 0, curve=((20.0, 0.9),))
    write_run(tmp_path, "resist", 0, protocol_kw={"local_steps": 5}, curve=((10.0, 0.9),))
    write_run(tmp_path, "resist", 0, protocol_kw={"local_steps": 20}, curve=((5.0, 0.9),))
    table = analysis.time_table(load_runs(tmp_path).runs, "localsgd")
    assert sorted(_rows(table, workers=2).protocol) == [
        "ResIST (local_steps=20)",
        "ResIST (local_steps=5)",
        "local SGD",
    ]
    assert list(_rows(table, protocol="ResIST (local_steps=20)", workers=2).speedup) == ["4.00×"]


def test_a_duplicate_seed_is_an_error_not_n2(tmp_path):
    name = write_run(tmp_path / "a", seed=0, curve=((1.0, 0.9),))
    write_run(tmp_path / "b", seed=0, name=name, curve=((1.0, 0.7),))  # the same run twice
    runs = load_runs([tmp_path / "a", tmp_path / "b"]).runs
    assert len(runs) == 2 and runs.group.nunique() == 1 and runs.run.nunique() == 2
    table = analysis.accuracy_table(runs)
    assert list(table.frame["test acc (%)"]) == ["error: seed 0 ×2"]
    assert list(analysis.time_table(runs, "localsgd").frame["train time (s)"]) == [
        "error: seed 0 ×2"
    ]


def test_time_to_target_counts_a_seed_that_never_reaches_it_as_infinite(tmp_path):
    # localsgd: seeds reach 80 % at 4 s and 6 s, the third never (trains 9 s)
    write_run(tmp_path, "localsgd", 0, curve=((2.0, 0.5), (4.0, 0.85)))
    write_run(tmp_path, "localsgd", 1, curve=((3.0, 0.5), (6.0, 0.81)))
    write_run(tmp_path, "localsgd", 2, curve=((4.5, 0.5), (9.0, 0.7)))
    # resist: one of three reaches it (at 1 s): the median is ∞
    write_run(tmp_path, "resist", 0, curve=((1.0, 0.9),))
    write_run(tmp_path, "resist", 1, curve=((1.5, 0.5), (3.0, 0.6)))
    write_run(tmp_path, "resist", 2, curve=((2.0, 0.5), (4.0, 0.6)))
    # ddp: all three reach it; ddp's median 2 s, localsgd's median over [4, 6, ∞] = 6 s
    for seed, t in enumerate((1.0, 2.0, 3.0)):
        write_run(tmp_path, "ddp", seed, curve=((t, 0.95),))
    r = load_runs(tmp_path)
    table = analysis.time_to_target(r.runs, r.metrics, 0.8, "localsgd")
    local = _rows(table, protocol="local SGD")
    assert list(local["median time to 80% (s)"]) == ["6.00"] and list(local.reached) == ["2/3"]
    resist = _rows(table, protocol="ResIST")
    assert list(resist["median time to 80% (s)"]) == ["∞ (not reached)"]
    assert list(resist.reached) == ["1/3"]
    # Only localsgd reaches it: resist is at most 6 / median(1, 3, 4) = 6 / 3 = 2× faster.
    assert list(resist.speedup) == ["<2.00×"]
    assert list(_rows(table, protocol="data parallel", workers=2).speedup) == ["3.00×"]  # 6 / 2


def test_a_speedup_where_only_the_protocol_reaches_the_target_is_a_lower_bound(tmp_path):
    for seed in (0, 1, 2):
        write_run(tmp_path, "localsgd", seed, curve=((10.0, 0.5), (20.0 + seed, 0.6)))
        write_run(tmp_path, "resist", seed, curve=((5.0, 0.9),))
    r = load_runs(tmp_path)
    table = analysis.time_to_target(r.runs, r.metrics, 0.8, "localsgd")
    # localsgd trained 20, 21, 22 s without reaching 80 %: resist is > 21 / 5 = 4.2× faster
    assert list(_rows(table, protocol="ResIST").speedup) == [">4.20×"]


def test_figures_keep_each_protocols_colour_and_embed_truetype_fonts(tmp_path):
    import faulty  # noqa: F401 - a test protocol that subclasses ddp without a style

    shipped = {
        n: c.__dict__["style"] for n, c in registry.load_all().items() if "style" in c.__dict__
    }
    assert len(shipped) >= 8
    assert style("faulty") != style("ddp")  # a subclass is never drawn as its parent
    assert len({c for c, _ in shipped.values()}) == len(shipped)  # distinct colours
    assert len({m for _, m in shipped.values()}) == len(shipped)  # and markers
    assert style("my_new_method") == style("my_new_method")  # stable for plugins
    before = {p: style(p) for p in shipped}
    style("another_method")
    assert before == {p: style(p) for p in shipped}  # a new protocol recolours nobody
    for seed in (0, 1):
        write_run(tmp_path / "r", "localsgd", seed, curve=((1.0, 0.5), (2.0, 0.8)))
        write_run(tmp_path / "r", "resist", seed, curve=((1.0, 0.6), (2.0, 0.85)))
    written, _ = generate([str(tmp_path / "r")], tmp_path / "out", [], "localsgd", 0.7)
    pdfs = [p for p in written if p.suffix == ".pdf"]
    assert len(pdfs) == 4
    for pdf in pdfs:
        raw = pdf.read_bytes()
        assert b"/FontFile2" in raw, pdf  # TrueType embedded (Type 42)
        assert b"/Type3" not in raw.replace(b" ", b""), pdf


def test_latex_tables_are_booktabs_escaped_and_right_aligned(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / "r", "localsgd", seed, curve=((1.0, 0.5), (2.0, 0.8)))
    generate([str(tmp_path / "r")], tmp_path / "out", [], "localsgd", 0.7)
    tex = (tmp_path / "out" / "tables" / "accuracy.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    spec = re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1)
    # data, model, protocol | workers, acc, CI, n | not completed
    assert spec == "lllrrrrl"
    body = tex.split("\\midrule")[1]
    assert "_" not in body.replace("\\_", "") and "%" not in body.replace("\\%", "")
    assert "±" not in tex and "$\\pm$" in tex
    caption = re.search(r"\\caption\{(.*)\}", tex).group(1)
    assert "data.batch\\_size=32" in caption  # common settings go into the caption


def test_reported_rows_name_the_model(tmp_path):
    write_run(tmp_path, "localsgd", 0)
    generate([str(tmp_path)], tmp_path / "out", [], "localsgd", 0.9)
    md = (tmp_path / "out" / "tables" / "reported_vs_reproduced.md").read_text()
    header = md.splitlines()[2]
    assert "| model |" in header and "| projected |" in header
    speech = [line for line in md.splitlines() if "| speech |" in line]
    assert len(speech) == 6 and len({line.split(" | ")[6] for line in speech}) == 2
    projected = [line for line in md.splitlines() if "| train_s |" in line]
    values = [float(line.split(" | ")[-1].rstrip(" |")) for line in projected]
    assert values and not any(math.isnan(v) for v in values)


def test_moved_aside_attempts_are_history_not_runs(tmp_path):
    """``<run>.old-<time>`` folders (force=true, a fresh restart) are earlier attempts of
    the same run: never pooled as a second seed, listed in paper/README.md instead."""
    root = tmp_path / "results"
    name = write_run(root, seed=0, curve=((1.0, 0.9),))
    write_run(root, seed=0, name=f"{name}.old-20261201-101500", curve=((1.0, 0.7),))
    write_run(root, seed=0, name=f"{name}.old-20261202-101500", status="failed")
    results = load_runs(root)
    assert list(results.runs.run) == [name]
    assert sorted(results.earlier) == [
        (str(root / f"{name}.old-20261201-101500"), "completed"),
        (str(root / f"{name}.old-20261202-101500"), "failed"),
    ]
    out = tmp_path / "paper"
    generate([str(root)], out, [], "localsgd", 0.9)
    row = [
        line
        for line in (out / "tables" / "accuracy.md").read_text().splitlines()
        if name[:6] in line or "| local SGD |" in line
    ]
    assert row == ["| digits | preact_resnet101x0.125 | local SGD | 2 | 90.00 | — | 1 | — |"]
    index = (out / "README.md").read_text()
    earlier = index.split("## Earlier attempts (not in the tables)")[1]
    assert f"{name}.old-20261202-101500 | failed" in earlier
    assert f"{name}.old-20261201-101500 | completed" in earlier


def test_protocols_drawn_alike_are_warned_about_by_the_report(tmp_path, monkeypatch, capsys):
    from suite.report import figures

    own = {"localsgd": ("#de8f05", "s"), "resist": ("#de8f05", "^"), "ddp": ("#0173b2", "s")}
    monkeypatch.setattr(figures, "style", lambda p: own[p])
    clashes = figures.style_clashes(["resist", "ddp", "localsgd"])
    assert clashes == [
        "protocols ddp and localsgd are drawn with the marker 's': set `style` (colour, "
        "marker) on one of their classes",
        "protocols localsgd and resist are drawn with the colour '#de8f05': set `style` "
        "(colour, marker) on one of their classes",
    ]
    assert figures.style_clashes(["ddp", "resist"]) == []
    for seed in (0, 1):
        write_run(tmp_path / "r", "localsgd", seed, curve=((1.0, 0.5), (2.0, 0.8)))
        write_run(tmp_path / "r", "resist", seed, curve=((1.0, 0.6), (2.0, 0.85)))
    generate([str(tmp_path / "r")], tmp_path / "out", [], "localsgd", 0.7)
    assert "warning: protocols localsgd and resist are drawn with the colour" in (
        capsys.readouterr().err
    )
