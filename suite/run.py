"""``python -m suite.run``: the Hydra application (the only module that sees Hydra).

Examples::

    python -m suite.run                                        # the embedded default
    python -m suite.run -m protocol=ddp,localsgd workers=2,4,8  # a sweep, 6 runs
    python -m suite.run protocol=ddp workers=4 data=cifar10 data.root=/data
"""

from __future__ import annotations

import sys
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from protocols.resist import PAPER_MIN_DEPTH
from suite.config import ConfigError, parse_run_config
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


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Turn the composed config into typed dataclasses and run it."""
    register_resolvers()  # here, not at import: submitit jobs import this module
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)
    try:
        run_cfg = parse_run_config({str(k): v for k, v in values.items()})
        return execute(run_cfg)
    except ConfigError as err:
        # A clear one-line refusal, before any worker process starts.
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
