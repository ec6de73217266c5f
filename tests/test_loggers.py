"""Metric loggers, read back with their own readers: TensorBoard's event reader, wandb's
offline run file (protobuf records), and the CSV."""

import csv
import json
import struct
import subprocess
import sys

import pytest

TINY = [
    "model.depth=18",
    "model.width=0.0625",
    "train.data_epochs=0.5",
    "train.eval_every=0.25",
    "data.batch_size=16",
    "launcher.threads=1",
]


def run(tmp_path, *args):
    proc = subprocess.run(
        [sys.executable, "-m", "suite.run", *args, *TINY, f"results_dir={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return sorted(p for p in tmp_path.glob("digits-*") if p.is_dir())


def rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_tensorboard_scalars_and_hparams_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = run(tmp_path, "logger=tensorboard")
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    want = rows(folder)
    acc = events.Scalars("test_acc")
    assert [e.step for e in acc] == [r["step"] for r in want]
    assert [e.value for e in acc] == pytest.approx([r["test_acc"] for r in want])
    assert {"train_loss", "bytes", "comm_s", "epoch"} <= set(events.Tags()["scalars"])
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["protocol.name"].string_value == "ddp"  # the config as hparams
    assert start.hparams["model.depth"].number_value == 18
    final = events.Scalars("final/final_test_acc")
    assert final[0].value == pytest.approx(want[-1]["test_acc"])


def wandb_records(path):
    """The records of a wandb run file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, pos, block, chunks, pending = path.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        chunk, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            chunks.append(pending + chunk)
    return [pb.Record.FromString(c) for c in chunks]


@pytest.mark.slow  # a real scenario over several seconds: the slow tier (CI runs it)
def test_wandb_offline_has_the_config_the_rows_and_a_group_per_sweep(tmp_path):
    pytest.importorskip("wandb")
    folders = run(tmp_path, "-m", "seed=0,1", "logger=wandb")
    (sweep,) = tmp_path.glob("_hydra/*")
    for folder in folders:
        (path,) = folder.glob("wandb/offline-run-*/*.wandb")
        records = wandb_records(path)
        (meta,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert meta.run_group == sweep.name  # a sweep's runs are one group
        config = {u.key: json.loads(u.value_json) for u in meta.config.update}
        assert config["protocol"]["name"] == "ddp" and config["model"]["depth"] == 18
        history = [
            {
                i.nested_key[0] if i.nested_key else i.key: json.loads(i.value_json)
                for i in r.history.item
            }
            for r in records
            if r.WhichOneof("record_type") == "history"
        ]
        got = [(h["_step"], h["test_acc"]) for h in history if "test_acc" in h]
        assert got == [(r["step"], pytest.approx(r["test_acc"])) for r in rows(folder)]
        summary = {
            u.key: json.loads(u.value_json)
            for r in records
            if r.WhichOneof("record_type") == "summary"
            for u in r.summary.update
        }
        assert summary["status"] == "completed"
        assert summary["final/final_test_acc"] == pytest.approx(rows(folder)[-1]["test_acc"])


def test_csv_rows_equal_the_jsonl(tmp_path):
    (folder,) = run(tmp_path, "logger=csv")
    with open(folder / "metrics.csv") as f:
        got = list(csv.DictReader(f))
    want = rows(folder)
    assert [int(r["step"]) for r in got] == [r["step"] for r in want]
    assert [float(r["test_acc"]) for r in got] == pytest.approx([r["test_acc"] for r in want])


def test_a_missing_logger_package_is_refused_with_the_extra_to_install(monkeypatch):
    import importlib.util

    from suite import loggers
    from suite.config import ConfigError, LoggerConfig, RunConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n))
    with pytest.raises(ConfigError, match=r"pip install 'commbench\[wandb\]'"):
        loggers.check(RunConfig(logger=LoggerConfig(name="wandb")))


def test_an_installed_but_broken_logger_package_is_refused_with_its_error(tmp_path, monkeypatch):
    import sys

    from suite import loggers
    from suite.config import ConfigError, LoggerConfig, RunConfig

    fake = tmp_path / "wandb"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise ImportError('libbroken.so: cannot open shared object')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    with pytest.raises(ConfigError) as err:
        loggers.check(RunConfig(logger=LoggerConfig(name="wandb")))
    assert str(err.value) == (
        "logger=wandb: the wandb package is installed but cannot be imported (ImportError: "
        "libbroken.so: cannot open shared object); reinstall it: pip install "
        "'commbench[wandb]' (or logger=none|csv)"
    )
