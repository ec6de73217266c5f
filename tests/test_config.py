import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import shipped_protocols, tiny_config
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import protocols
from suite import architectures, datasources, optimizers
from suite.architectures import PreActResNetConfig
from suite.config import (
    ConfigError,
    LaunchConfig,
    LoggerConfig,
    RunConfig,
    TrainConfig,
)
from suite.datasources import Digits
from suite.optimizers import SGD
from suite.problem import parse_run_config
from suite.sweep import register

CONF = Path(__file__).parent.parent / "suite" / "conf"


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides):
    register()
    with initialize_config_module(config_module="suite.conf", version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    values = OmegaConf.to_container(cfg, resolve=True)
    return parse_run_config(values)


def test_every_protocol_is_a_choice_of_the_protocol_group_without_a_yaml():
    """A protocol's Config dataclass is its schema (ConfigStore): no yaml to keep in step."""
    from hydra.core.config_store import ConfigStore

    register()
    stored = {Path(name).stem for name in ConfigStore.instance().list("protocol")}
    assert set(shipped_protocols()) <= stored
    assert not (CONF / "protocol").exists()
    for name in shipped_protocols():
        cfg = _compose([f"protocol={name}"])
        assert cfg.protocol == protocols.get(name).Config()  # the dataclass's defaults


@pytest.mark.parametrize("protocol", shipped_protocols())
@pytest.mark.parametrize("data", sorted(datasources.REGISTRY.load_all()))
@pytest.mark.parametrize("model", sorted(architectures.REGISTRY.load_all()))
def test_every_config_composes_into_typed_dataclasses(protocol, data, model):
    cfg = _compose([f"protocol={protocol}", f"data={data}", f"model={model}"])
    assert isinstance(cfg, RunConfig)
    assert cfg.protocol_name == protocol and cfg.data.name == data
    assert cfg.launcher.device == "auto"
    assert cfg.optim.name == protocols.get(protocol).selects.get("optim", "sgd")


def test_embedded_default():
    cfg = _compose([])
    assert (cfg.protocol_name, cfg.workers, cfg.data.name) == ("ddp", 2, "digits")
    assert (cfg.model.depth, cfg.model.bn) == (101, "batch")


def test_the_composed_default_is_every_dataclass_default():
    """No yaml copy of a default can drift from its schema: the embedded default composes
    to each section's dataclass defaults (train, launcher, every data set, model and
    optimizer are stored from them), every data set, model and optimizer to its own
    class's defaults, and every logger to its dataclass with only the name chosen."""
    cfg = _compose([])
    assert cfg.train == TrainConfig() and cfg.launcher == LaunchConfig()
    assert (cfg.model, cfg.data, cfg.optim) == (PreActResNetConfig(), Digits(), SGD())
    assert cfg.logger == LoggerConfig() and cfg.protocol == protocols.get("ddp").Config()
    plain = RunConfig()
    assert (cfg.workers, cfg.seed, cfg.results_dir, cfg.force) == (
        plain.workers,
        plain.seed,
        plain.results_dir,
        plain.force,
    )
    for registry in (datasources.REGISTRY, architectures.REGISTRY, optimizers.REGISTRY):
        for name, component in registry.load_all().items():
            assert getattr(_compose([f"{registry.key}={name}"]), registry.key) == component()
    for option in _options("logger"):
        assert _compose([f"logger={option}"]).logger == LoggerConfig(name=option)
    assert not any((CONF / stored).exists() for stored in ("launcher", "data", "model", "optim"))
    assert "\ntrain:" not in (CONF / "config.yaml").read_text()


def test_overrides_reach_the_protocol_config():
    cfg = _compose(
        ["protocol=localsgd", "protocol.local_steps=3", "protocol.optimizer_state=reset"]
    )
    assert cfg.protocol.local_steps == 3 and cfg.protocol.optimizer_state == "reset"


def test_unknown_keys_and_bad_values_are_named():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lr_typo'\] in optim"):
        _compose(["+optim.lr_typo=1"])
    with pytest.raises(ConfigError, match="local_steps must be int"):
        _compose(["protocol=localsgd", "protocol.local_steps=abc"])
    with pytest.raises(
        ConfigError,
        match=r"optimizer_state='sometimes' is not valid; "
        r"choose one of \['keep', 'average', 'reset'\]",
    ):
        _compose(["protocol=localsgd", "protocol.optimizer_state=sometimes"])
    with pytest.raises(
        ConfigError, match=r"unknown protocol 'nope'; valid: auxnet, ddp, .*resist, .*single"
    ):
        protocols.parse_config({"name": "nope"})


def test_run_name_is_a_stable_hash_of_the_semantic_config():
    a = _compose([])
    b = _compose(["results_dir=elsewhere", "force=true", "launcher.threads=1"])
    c = _compose(["seed=1"])
    assert a.run_name() == b.run_name() != c.run_name()
    assert a.run_name().startswith("digits-preact_resnet101-ddp-w2-s0-")
    # The backend left to auto names no run; a chosen one changes timings, so it counts.
    assert _compose(["launcher.backend=auto"]).run_name() == a.run_name()
    assert _compose(["launcher.backend=gloo"]).run_name() != a.run_name()


@pytest.mark.parametrize("method", ["resist", "localsgd"])
@pytest.mark.parametrize(("workers", "depth"), [(2, 11), (4, 6), (8, 4)])
@pytest.mark.parametrize("data", ["cifar10", "cifar100"])
def test_paper_presets(method, workers, depth, data):
    cfg = _compose(
        [f"+experiment={method}_cifar", f"workers={workers}", f"data={data}", "data.root=/d"]
    )
    assert cfg.protocol_name == method and cfg.protocol.local_steps == 50
    assert cfg.protocol.optimizer_state == "reset"
    if method == "resist":
        assert cfg.protocol.min_depth == depth
    assert (cfg.model.depth, cfg.model.width, cfg.model.bn) == (101, 1.0, "batch")
    assert (cfg.data.name, cfg.data.batch_size, cfg.data.sharding) == (data, 128, "full")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.03, 0.9, 5e-4)
    assert cfg.optim.milestones == (0.5, 0.75)
    # The released script: specs['epochs'] = 40 per worker, every worker walking the
    # whole training set (sharding=full): 40·S passes over the set in all.
    samples = 40 * workers * 50_000
    assert cfg.train.data_epochs * 50_000 == samples


def test_paper_preset_refuses_other_worker_counts():
    with pytest.raises(Exception, match="minimum depth for workers in"):
        _compose(["+experiment=resist_cifar", "workers=3", "data.root=/d"])


@pytest.mark.parametrize("method", ["ist", "localsgd", "ddp"])
@pytest.mark.parametrize(("layers", "hidden"), [(2, 4096), (3, 8192)])
def test_speech_presets(method, layers, hidden):
    cfg = _compose([f"+experiment={method}_speech_{layers}layer", "data.root=/d"])
    assert cfg.protocol_name == method and cfg.data.name == "speech"
    assert (cfg.model.name, cfg.model.layers, cfg.model.hidden) == ("mlp", layers, hidden)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.data.batch_size) == (0.01, 0.0, 128)
    if method != "ddp":
        assert cfg.protocol.local_steps == 20


def test_optimizers_are_a_group_and_protocols_may_select_one():
    adamw = _compose(["optim=adamw"]).optim
    assert (adamw.name, adamw.lr, adamw.weight_decay, adamw.betas) == (
        "adamw",
        1e-3,
        0.01,
        (0.9, 0.999),
    )
    assert _compose(["protocol=diloco"]).optim.name == "adamw"  # the paper's inner optimizer
    assert _compose(["protocol=diloco", "optim=sgd"]).optim.name == "sgd"  # the user's choice wins
    # Each optimizer has its own knobs: another one's is refused by name, not ignored.
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['betas'\] in optim \(sgd\)"):
        _compose(["+optim.betas=[0.5,0.5]"])
    assert _compose(["optim=adamw", "optim.betas=[0.5,0.5]"]).optim.betas == (0.5, 0.5)


def test_ist_selects_the_mlp_and_other_protocols_keep_the_resnet():
    assert _compose(["protocol=ist"]).model.name == "mlp"
    assert _compose(["protocol=localsgd"]).model.name == "preact_resnet"
    assert _compose(["protocol=ddp", "model=mlp"]).model.name == "mlp"


def test_committed_reference_runs_keep_their_names():
    """Run folders are named by a hash of the semantic config: it must stay stable, or a
    re-run of the documented sweep would not recognise (and skip) completed runs."""
    reference = Path(__file__).parent.parent / "results" / "reference"
    folders = [p.parent for p in reference.glob("*/config.yaml") if ".old-" not in p.parent.name]
    assert len(folders) == 99
    for folder in folders:
        values = yaml.safe_load((folder / "config.yaml").read_text())
        assert parse_run_config(values, recorded=True).run_name() == folder.name


def test_the_sweep_dir_is_the_launchers_in_every_process_that_unpickles_its_config():
    """SLURM tasks re-resolve the pickled sweep config: ``${pid:}`` must give the
    launcher's pid there (cached like Hydra's ``${now:}``), or every task writes into a
    sweep dir of its own and the sweep's summary finds none of its runs."""
    register()
    cfg = OmegaConf.create({"dir": "sweep-${pid:}"})
    here = cfg.dir
    assert here.endswith(f"-{os.getpid()}")
    code = (
        "import pickle, sys; from suite.sweep import register; register(); "
        "print(pickle.loads(sys.stdin.buffer.read()).dir)"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(cfg), capture_output=True, check=True
    )
    assert there.stdout.decode().strip() == here


def test_a_model_records_whether_it_is_convolutional_for_readers_without_its_plugin():
    """config.yaml carries the model family's ``convolutional``: where the family is not
    installed (a plugin model's runs read elsewhere), train.channels_last still leaves
    the identity of a model with nothing to lay out, as it does where it is installed."""
    from suite.config import semantic_config
    from suite.problem import parse_run_config

    cfg = tiny_config("ddp", model={"name": "mlp"})
    recorded = cfg.to_dict()
    assert recorded["model"]["convolutional"] is False
    assert parse_run_config(recorded) == cfg  # a fact, not a knob: read back as before
    assert "channels_last" not in semantic_config(recorded)["train"]
    elsewhere = copy.deepcopy(recorded)
    elsewhere["model"]["name"] = "mlp_from_a_plugin_not_installed"
    assert "channels_last" not in semantic_config(elsewhere)["train"]
    elsewhere["model"]["convolutional"] = True
    assert "channels_last" in semantic_config(elsewhere)["train"]
    assert "convolutional" not in semantic_config(elsewhere)["model"]
