"""``python -m suite.run``: the Hydra application (the only entry point that sees Hydra).

Examples::

    python -m suite.run                                        # the embedded default
    python -m suite.run -m protocol=ddp,localsgd workers=2,4,8  # a sweep, 6 runs
    python -m suite.run protocol=ddp workers=4 data=cifar10 data.root=/data

Protocols, shipped and from installed plugins (``commbench.protocols`` entry points),
are registered with Hydra before it composes (``suite.sweep.register``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from suite.config import ConfigError
from suite.launch import execute
from suite.sweep import register, run_config, write_outcome

try:  # before Hydra composes: protocol=<plugin> must be a known choice
    register()
except ConfigError as err:  # a plugin that does not load: one line, not a traceback
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2) from None


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
