"""Where the numbers come from, in one line for every caption: the machine, how many
workers shared each core, the link, and the size of each data set."""

from __future__ import annotations

import pandas as pd


def train_sizes(runs: pd.DataFrame) -> dict[str, int]:
    """Training-set size per data set, from what the runs processed: steps × batch ×
    workers = data-epochs × training-set size (auxnet's ranks share one batch: left out)."""
    needed = ("data_epochs", "steps", "data.batch_size")
    if runs.empty or any(c not in runs for c in needed):
        return {}
    done = runs[(runs.status == "completed") & (runs.protocol != "auxnet")]
    done = done[(done.data_epochs.astype(float) > 0) & (done.steps.astype(float) > 0)]
    sizes: dict[str, int] = {}
    for data, g in done.groupby("data", sort=True):
        samples = g.steps.astype(float) * g["data.batch_size"].astype(float) * g.workers
        # Incomplete final batches are dropped, so one pass is at most a batch per worker
        # short of the set: the largest estimate, rounded, is the size.
        sizes[str(data)] = int(float((samples / g.data_epochs.astype(float)).max()) + 0.5)
    return sizes


def _range(values: pd.Series, unit: str = "") -> str:
    v = sorted({x for x in values.dropna()})
    if not v:
        return "unknown"
    fmt = [f"{x:g}" if isinstance(x, float) else str(x) for x in (v[0], v[-1])]
    return (fmt[0] if v[0] == v[-1] else f"{fmt[0]}–{fmt[1]}") + unit


def context(runs: pd.DataFrame) -> str:
    """One line: device, cores, workers per core, link, data set sizes."""
    if runs.empty:
        return "No runs."
    cpu = runs.get("env.cpu", pd.Series(dtype=object)).dropna()
    cores = pd.to_numeric(runs.get("env.cpu_count", pd.Series(dtype=float)), errors="coerce")
    gpus = runs.get("env.gpus", pd.Series(dtype=object)).astype(object).fillna("").astype(str)
    device = "GPU: " + ", ".join(sorted(set(gpus[gpus != ""]))) if (gpus != "").any() else "CPU"
    per_core = (runs.workers / cores).where(cores > 0)
    links = runs["link"].dropna().unique() if "link" in runs else []
    link = "emulated " + ", ".join(sorted(map(str, links))) if len(links) else "loopback (gloo)"
    sizes = ", ".join(f"{d} {n:,} training images" for d, n in train_sizes(runs).items())
    return (
        f"Measured on {device} ({', '.join(sorted(set(cpu.astype(str)))) or 'CPU unknown'}), "
        f"{_range(cores)} cores, {_range(per_core.round(2))} workers per core, link: {link}; "
        f"data: {sizes or 'unknown'}."
    )
