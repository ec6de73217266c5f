"""Metric loggers users already use (``logger=tensorboard|wandb|csv``), fed by rank 0.

``metrics.jsonl`` in the run folder stays the source of truth (the report reads only
it); a logger receives the same row at every evaluation, the config at the start and
the summary at the end:

- ``tensorboard``: ``torch.utils.tensorboard`` event files in ``<run>/tensorboard/``,
  one scalar per metric at the worker's step, and the config as hparams with the final
  metrics at the end (``pip install 'commbench[tensorboard]'``);
- ``wandb``: a run in ``<run>/wandb/`` with the config attached, offline by default (no
  network; ``wandb sync`` uploads later), a sweep's runs in one group named after it
  (``pip install 'commbench[wandb]'``);
- ``csv``: ``<run>/metrics.csv``, one row per evaluation.

A resumed run continues its logs from the checkpoint: rows written after it are dropped
(csv) or purged (TensorBoard's ``purge_step``); wandb resumes the same run id.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from suite.config import ConfigError, RunConfig, flatten_config
from suite.record import Summary

#: The package each logger needs, for a clear refusal before anything starts.
NEEDS = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check(cfg: RunConfig) -> None:
    """Refuse a logger whose package is not installed, or does not import, naming the
    extra to install."""
    package = NEEDS.get(cfg.logger.name)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"logger={cfg.logger.name} needs the {package} package: "
            f"pip install 'commbench[{cfg.logger.name}]' (or logger=none|csv)"
        )
    if package:  # installed is not enough: a broken install fails only when imported
        try:
            importlib.import_module(package)
        except Exception as err:
            raise ConfigError(
                f"logger={cfg.logger.name}: the {package} package is installed but cannot be "
                f"imported ({type(err).__name__}: {err}); reinstall it: pip install "
                f"'commbench[{cfg.logger.name}]' (or logger=none|csv)"
            ) from None


class MetricLogger:
    """Does nothing (``logger=none``); the base of the others."""

    def __init__(self, cfg: RunConfig, run_dir: Path, rows: list[dict[str, Any]]) -> None:
        """``rows``: the metric rows already written (a resumed run continues after them)."""
        self.cfg, self.run_dir = cfg, run_dir

    def log(self, row: dict[str, Any]) -> None:
        """One evaluation's row."""

    def finish(self, summary: Summary) -> None:
        """The run's summary; close files."""


def _scalars(row: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("step", "round")
    }


class CsvLogger(MetricLogger):
    """``<run>/metrics.csv``."""

    def __init__(self, cfg: RunConfig, run_dir: Path, rows: list[dict[str, Any]]) -> None:
        super().__init__(cfg, run_dir, rows)
        self.path = run_dir / "metrics.csv"
        self.columns: list[str] | None = None
        if rows:  # a resume: exactly the rows the checkpoint covers
            self.columns = list(rows[0])
            with open(self.path, "w", newline="") as f:
                writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        else:
            self.path.unlink(missing_ok=True)

    def log(self, row: dict[str, Any]) -> None:
        new = self.columns is None
        self.columns = self.columns or list(row)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


class TensorBoardLogger(MetricLogger):
    """``<run>/tensorboard/``: scalars per evaluation, hparams at the end."""

    def __init__(self, cfg: RunConfig, run_dir: Path, rows: list[dict[str, Any]]) -> None:
        super().__init__(cfg, run_dir, rows)
        from torch.utils.tensorboard import SummaryWriter

        purge = rows[-1]["step"] + 1 if rows else None  # a resume: drop what came later
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)

    def log(self, row: dict[str, Any]) -> None:
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, global_step=row["step"])
        self.writer.flush()

    def finish(self, summary: Summary) -> None:
        config = flatten_config(self.cfg.to_dict())
        hparams = {
            k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in config.items()
        }
        final = {f"final/{k}": v for k, v in _scalars(summary).items()}
        self.writer.add_hparams(hparams, final, run_name=".")
        self.writer.close()


class WandbLogger(MetricLogger):
    """A wandb run in ``<run>/wandb/`` (offline unless ``logger.mode=online``)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, rows: list[dict[str, Any]]) -> None:
        super().__init__(cfg, run_dir, rows)
        import wandb

        (run_dir / "wandb").mkdir(exist_ok=True)
        self.run = wandb.init(
            project=cfg.logger.project,
            group=cfg.logger.group,
            name=run_dir.name,
            id=run_dir.name.rsplit("-", 1)[-1] + f"s{cfg.seed}",  # stable: resumes continue
            resume="allow",
            dir=str(run_dir),
            mode=cfg.logger.mode,
            config=cfg.to_dict(),
            settings=wandb.Settings(console="off", silent=True),
        )

    def log(self, row: dict[str, Any]) -> None:
        self.run.log(_scalars(row), step=int(row["step"]))

    def finish(self, summary: Summary) -> None:
        for key, value in _scalars(summary).items():
            self.run.summary[f"final/{key}"] = value
        self.run.summary["status"] = summary.get("status")
        self.run.finish()


LOGGERS: dict[str, type[MetricLogger]] = {
    "none": MetricLogger,
    "csv": CsvLogger,
    "tensorboard": TensorBoardLogger,
    "wandb": WandbLogger,
}


def open_logger(cfg: RunConfig, run_dir: Path, rows: list[dict[str, Any]]) -> MetricLogger:
    """The configured logger of a run (rank 0), continuing after ``rows``."""
    return LOGGERS[cfg.logger.name](cfg, run_dir, rows)
