"""``python -m suite.run``: the Hydra application (the only entry point that sees Hydra).

Examples::

    python -m suite.run                                        # the embedded default
    python -m suite.run -m protocol=ddp,localsgd workers=2,4,8  # a sweep, 6 runs
    python -m suite.run protocol=ddp workers=4 data=cifar10 data.root=/data

Protocols, shipped and from installed plugins (``commbench.protocols`` entry points),
are registered with Hydra before it composes (``suite.sweep.register``).
"""

from __future__ import annotations

if __name__ == "__main__":  # the ranks' fork server imports torch while we import ours
    import sys as _sys

    from suite._forkserver import start_early

    start_early(_sys.argv[1:])

import contextlib
import dataclasses
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import QuotedString
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from suite.config import ConfigError
from suite.launch import RunBusy, check_writable, execute
from suite.overrides import check_overrides
from suite.record import Summary
from suite.sweep import register, run_config, write_outcome

try:  # before Hydra composes: protocol=<plugin> must be a known choice
    register()
except ConfigError as err:  # a plugin that does not load: one line, not a traceback
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2) from None


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> Summary:
    """Turn the composed config into typed dataclasses and run it.

    Exit status of a single run: 0 completed or diverged (a result; the summary line
    says which), 1 failed, 2 refused before any worker started (invalid configuration,
    the same run already running), 128 + the signal's number when SIGINT, SIGTERM or
    SIGHUP stopped it (130, 143, 129). A multirun runs every point, ends with its summary,
    and then exits 1 if any point failed or was busy (``suite.sweep.SweepSummary``).
    """
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    folder = Path(hydra_cfg.runtime.output_dir)
    try:
        run = run_config(cfg)
        if multirun and run.logger.group is None:  # wandb: a sweep is a group
            group = Path(str(hydra_cfg.sweep.dir)).name
            run = dataclasses.replace(run, logger=dataclasses.replace(run.logger, group=group))
        summary = execute(run)
    except RunBusy as err:
        if not multirun:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        print(f"[busy] {err}")  # the sweep goes on; its summary counts this point
        summary = {"status": "busy", "error": str(err), "protocol": run.protocol.name}
        summary |= {"workers": run.workers, "seed": run.seed}
    except ConfigError as err:
        # A clear one-line refusal, before any worker process starts.
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if summary.get("rank", 0) == 0:  # one line per sweep job for the sweep's summary
        write_outcome(folder, summary)
    if summary.get("signal") and not multirun:  # stopped by a signal: 128 + its number
        raise SystemExit(128 + signal.Signals[summary["signal"]])
    if summary.get("status") == "failed" and not multirun:
        raise SystemExit(1)
    return summary


def _refuse_unwritable_results(argv: list[str]) -> None:
    """Hydra creates its log folder under results_dir before any code of ours runs, and
    fails there with a traceback: check the folder first and refuse in one line. Every
    form is read as Hydra reads it (quoted, ``++``, a sweep over several folders)."""
    for value in results_dirs(argv):
        try:
            check_writable(value)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None


def results_dirs(argv: list[str]) -> list[str]:
    """The results folder(s) the command line gives, as Hydra parses them (the last
    override wins; the config's default when none); interpolations resolved."""
    parser, overrides = OverridesParser.create(), []
    for arg in argv:  # one by one: the value of a flag (--cfg job) is no override
        with contextlib.suppress(HydraException):
            overrides += parser.parse_overrides([arg])
    given = [o for o in overrides if o.key_or_group == "results_dir" and not o.is_delete()]
    if not given:
        return ["results"]
    last = given[-1]
    values = list(last.sweep_iterator()) if last.is_sweep_override() else [last.value()]
    texts = [v.text if isinstance(v, QuotedString) else str(v) for v in values]
    resolved = []
    for text in texts:
        try:
            resolved.append(str(OmegaConf.create({"v": text}).v))
        except OmegaConfBaseException:  # not resolvable here: checked once composed
            continue
    return resolved


def _refuse_bad_overrides(argv: list[str]) -> None:
    """Hydra refuses an unknown option or key before ``main`` runs, in many lines and with
    exit status 1: check the overrides first (every sweep point) and refuse in one line."""
    try:
        check_overrides(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    _refuse_bad_overrides(sys.argv[1:])
    _refuse_unwritable_results(sys.argv[1:])
    main()
