"""The ResIST paper's Table 1: data communicated per round (GB), computed, not typed.

Each row is a paper preset (``suite/conf/experiment``) composed for CIFAR-100 at 2, 4
and 8 workers, exactly as the command line would; its protocol's own
``paper_bytes_per_round`` on the paper's model (pre-activation ResNet-101 of basic
blocks, full width) gives the bytes per round (every worker's sends plus receives,
fp32, GB = 10^9). Runs record the same quantity through ``Comm``; the tests check that
short real runs of that model record exactly these numbers.
"""

from __future__ import annotations

import pandas as pd
from torch import nn

import protocols
from protocols.base import ProblemInfo
from suite.models.resnet import preact_resnet
from suite.problem import parse_run_config
from suite.report.analysis import protocol_title
from suite.sweep import compose

#: The presets of the paper's Table 1, in its row order.
TABLE1_PRESETS = ("localsgd_cifar", "resist_cifar")


def paper_model(num_classes: int = 100) -> nn.Module:
    """The paper's PreActResNet101 ([3, 4, 23, 3] basic blocks, widths 64-512)."""
    return preact_resnet(101, num_classes, in_channels=3, width=1.0, bn="batch")


def paper_info(model: nn.Module, batch_size: int = 128) -> ProblemInfo:
    """What a protocol is told about the paper's CIFAR setting."""
    return ProblemInfo(model, "cifar100", 50_000, batch_size, "full", 0, (3, 32, 32), 160.0)


def comm_per_round(workers: tuple[int, ...] = (2, 4, 8), num_classes: int = 100) -> pd.DataFrame:
    """Bytes and GB per round of each Table-1 preset at each worker count."""
    model = paper_model(num_classes)
    rows = []
    for s in workers:
        for preset in TABLE1_PRESETS:
            values = compose((f"+experiment={preset}", "data=cifar100", f"workers={s}"))
            cfg = parse_run_config(values)
            proto = cfg.protocol
            info = paper_info(model, cfg.data.batch_size)
            nbytes = protocols.get(proto.name).paper_bytes_per_round(proto, info, s)
            rows.append(
                {
                    "protocol": proto.name,
                    "workers": s,
                    "min_depth": getattr(proto, "min_depth", "-"),
                    "bytes_per_round": nbytes,
                    "GB_per_round": nbytes / 1e9,
                }
            )
    return pd.DataFrame(rows)


def comm_table(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's layout: one row per method, one column per worker count."""
    wide = df.pivot(index="protocol", columns="workers", values="GB_per_round")
    order = list(dict.fromkeys(df.protocol))
    wide = wide.loc[order]
    out = pd.DataFrame({"method": [protocol_title(p) for p in wide.index]})
    for s in wide.columns:
        out[f"{s} workers (GB)"] = [f"{v:.3f}" for v in wide[s]]
    return out
