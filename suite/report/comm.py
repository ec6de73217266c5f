"""The ResIST paper's Table 1: data communicated per round (GB), computed, not typed.

For the paper's model (pre-activation ResNet-101 of basic blocks, full width, CIFAR-100
classifier) each protocol's own ``paper_bytes_per_round`` gives the bytes per round
(every worker's sends plus receives, fp32, GB = 10^9). Runs record the same quantity
through ``Comm``; the tests check that a short real run's bytes match these numbers.
"""

from __future__ import annotations

import pandas as pd
from torch import nn

import protocols
from protocols.resist import PAPER_MIN_DEPTH
from suite.models.resnet import preact_resnet


def paper_model(num_classes: int = 100) -> nn.Module:
    """The paper's PreActResNet101 ([3, 4, 23, 3] basic blocks, widths 64-512)."""
    return preact_resnet(101, num_classes, in_channels=3, width=1.0, bn="batch")


def comm_per_round(workers: tuple[int, ...] = (2, 4, 8), num_classes: int = 100) -> pd.DataFrame:
    """Bytes and GB per round for local SGD and ResIST (paper's minimum depths)."""
    model = paper_model(num_classes)
    rows = []
    for s in workers:
        settings = {
            "localsgd": {"name": "localsgd", "local_steps": 50},
            "resist": {"name": "resist", "local_steps": 50, "min_depth": PAPER_MIN_DEPTH[s]},
        }
        for name, values in settings.items():
            cfg = protocols.parse_config(values)
            nbytes = protocols.get(name).paper_bytes_per_round(cfg, model, s)
            rows.append(
                {
                    "protocol": name,
                    "workers": s,
                    "min_depth": values.get("min_depth", "-"),
                    "bytes_per_round": nbytes,
                    "GB_per_round": nbytes / 1e9,
                }
            )
    return pd.DataFrame(rows)


def comm_table(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's layout: one row per method, one column per worker count."""
    wide = df.pivot(index="protocol", columns="workers", values="GB_per_round")
    wide = wide.loc[[p for p in ("localsgd", "resist") if p in wide.index]]
    out = pd.DataFrame(
        {"method": ["local SGD" if p == "localsgd" else "ResIST" for p in wide.index]}
    )
    for s in wide.columns:
        out[f"{s} workers (GB)"] = [f"{v:.3f}" for v in wide[s]]
    return out
