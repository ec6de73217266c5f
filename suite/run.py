"""``python -m suite.run``: the Hydra application (the only module that sees Hydra).

Examples::

    python -m suite.run                                        # the embedded default
    python -m suite.run -m protocol=ddp,localsgd workers=2,4,8  # a sweep, 6 runs
    python -m suite.run protocol=ddp workers=4 data=cifar10 data.root=/data
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from protocols.resist import PAPER_MIN_DEPTH
from suite.cluster import write_outcome
from suite.config import ConfigError, RunConfig, parse_run_config
from suite.launch import execute


def paper_min_depth(workers: int) -> int:
    """ResIST's minimum depth in the paper's tables, by worker count (``${paper_min_depth:..}``)."""
    if int(workers) not in PAPER_MIN_DEPTH:
        raise ConfigError(
            f"the paper's presets define a minimum depth for workers in "
            f"{sorted(PAPER_MIN_DEPTH)}, not {workers}; set protocol.min_depth yourself"
        )
    return PAPER_MIN_DEPTH[int(workers)]


def register_resolvers() -> None:
    """Config resolvers used by the presets in ``suite/conf/experiment``."""
    OmegaConf.register_new_resolver("paper_min_depth", paper_min_depth, replace=True)


def run_config(cfg: DictConfig) -> RunConfig:
    """The composed Hydra config (without its ``hydra`` node) as typed dataclasses."""
    register_resolvers()
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)
    return parse_run_config({str(k): v for k, v in values.items()})


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Turn the composed config into typed dataclasses and run it."""
    try:
        summary = execute(run_config(cfg))
    except ConfigError as err:
        # A clear one-line refusal, before any worker process starts.
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if summary.get("rank", 0) == 0:  # one line per sweep job for the sweep's summary
        write_outcome(Path(HydraConfig.get().runtime.output_dir), summary)
    return summary


if __name__ == "__main__":
    main()
