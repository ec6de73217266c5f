"""The GPU check: throughput against the device's peak, ResIST's compute ratio on the
device, the suite's own launcher with GPU tensors, NCCL, and peak memory per rank.

    python -m suite.bench.gpu            # a GPU machine (sized for < 8 min; not yet timed)
    python -m suite.bench.gpu --smoke    # anywhere, on the CPU, tiny: keeps it from rotting

One record in ``results/bench/gpu-<device>.json`` with:

- images/s and achieved FLOP/s (6 FLOPs per multiply-accumulate, forward + backward)
  as a percentage of the device's peak, for the full-width pre-activation ResNet-101 on
  CIFAR-shaped data (batch 128): fp32 (convolutions in TF32, PyTorch's default), bf16
  autocast, channels-last, both, and ``torch.compile`` where it works (a failure is
  recorded, not fatal);
- ResIST's largest sub-ResNet at 4 workers (P = 22 blocks dealt 6/6/5/5) against the
  full network: the measured step-time ratio beside the ratio the block counts imply
  (multiply-accumulates);
- 2-rank runs through the suite's launcher on the one GPU (gloo with GPU tensors, so
  ``Comm``, its staging and its byte counts run on the device) for ddp, localsgd and
  resist, each checked against its protocol's ``paper_bytes_per_round``;
- NCCL between two ranks when there are two or more GPUs, else a skip saying why;
- peak GPU memory per rank of resist vs localsgd at 4 workers (4 ranks sharing the GPU).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F

import protocols
from suite.bench import round_floats, write_record
from suite.models.flops import count_macs, sub_resnet_macs
from suite.models.resnet import preact_resnet
from suite.problem import load_problem, parse_run_config
from suite.sweep import compose

#: Dense peak FLOP/s of devices this suite has met (vendor data sheets), by a substring
#: of ``torch.cuda.get_device_name``: (fp32, tf32, bf16) in TFLOP/s, without sparsity.
PEAKS = {
    "H200": (67.0, 494.7, 989.4),
    "H100 SXM": (67.0, 494.7, 989.4),
    "H100 PCIe": (51.0, 378.0, 756.0),
    "H100": (67.0, 494.7, 989.4),
    "A100": (19.5, 156.0, 312.0),
    "V100": (15.7, 15.7, 125.0),
}


def peak(name: str) -> tuple[float, float, float] | None:
    for key, value in PEAKS.items():
        if key in name:
            return value
    return None


def _time_steps(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, bf16: bool
) -> float:
    """Seconds per training step (forward, backward, SGD), after warm-up steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    device = x.device

    def one() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def throughput(
    device: torch.device, width: float, batch: int, steps: int, smoke: bool
) -> list[dict[str, Any]]:
    """Images/s and achieved FLOP/s of the ResNet-101 in each numeric mode."""
    x_cpu = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,), device=device)
    macs = count_macs(preact_resnet(101, 10, 3, width, "batch"), x_cpu[:2]) / 2
    flops_per_step = 6 * macs * batch
    peaks = peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    rows = []
    modes = [
        ("fp32", False, False, False),
        ("bf16 autocast", True, False, False),
        ("channels-last", False, True, False),
        ("bf16 + channels-last", True, True, False),
        ("bf16 + channels-last + compile", True, True, True),
    ]
    for name, bf16, nhwc, compiled in modes:
        row: dict[str, Any] = {"mode": name, "batch": batch, "width": width}
        try:
            torch.manual_seed(0)
            model = preact_resnet(101, 10, 3, width, "batch").to(device)
            x = x_cpu.to(device)
            if nhwc:
                model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
                x = x.contiguous(memory_format=torch.channels_last)
            if compiled:
                if smoke:
                    raise RuntimeError("not tried in --smoke (compiling takes minutes on a CPU)")
                model = torch.compile(model)  # type: ignore[assignment]
            step = _time_steps(model, x, y, steps, bf16)
            row |= {
                "step_s": step,
                "images_per_s": batch / step,
                "tflops": flops_per_step / step / 1e12,
            }
            if peaks is not None:
                reference = peaks[2] if bf16 else peaks[1]  # fp32 convolutions run in TF32
                row["pct_of_peak"] = 100 * row["tflops"] / reference
                row["peak_used_tflops"] = reference
        except Exception as err:  # torch.compile may not work everywhere: say so, go on
            row["error"] = (
                f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            )
        rows.append(row)
    return rows


def resist_ratio(device: torch.device, width: float, batch: int, steps: int) -> dict[str, Any]:
    """ResIST's largest sub-ResNet at 4 workers vs the full network, measured and implied."""
    from protocols.resist import share_sizes

    torch.manual_seed(0)
    model = preact_resnet(101, 10, 3, width, "batch").to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    blocks = model.partitionable_blocks()
    depth = max(share_sizes(len(blocks), 4, 0))
    full = _time_steps(model, x, y, steps, False)
    for i, b in enumerate(blocks):
        b.active = i < depth
    sub = _time_steps(model, x, y, steps, False)
    for b in blocks:
        b.active = True
    implied = sub_resnet_macs(model, x[:2], depth) / count_macs(model, x[:2])
    return {
        "workers": 4,
        "blocks": depth,
        "of": len(blocks),
        "full_step_s": full,
        "sub_step_s": sub,
        "measured_ratio": sub / full,
        "implied_ratio": implied,
    }


def launcher_runs(
    device: str, backend: str, workers: int, names: list[str], smoke: bool
) -> list[dict[str, Any]]:
    """Real runs through ``suite.launch.execute`` on this device, bytes checked."""
    from suite.launch import execute

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            overrides = [
                f"protocol={name}",
                f"workers={workers}",
                f"launcher.device={device}",
                f"launcher.backend={backend}",
                f"train.data_epochs={0.5 if smoke else 2}",
                "train.eval_every=1000",
                "train.checkpoint=false",
                "launcher.progress=false",
                f"results_dir={tmp}",
            ]
            if smoke:
                overrides += ["++model.depth=34", "++model.width=0.0625", "launcher.threads=1"]
            row: dict[str, Any] = {"protocol": name, "workers": workers, "backend": backend}
            try:
                cfg = parse_run_config(compose(tuple(overrides)))
                s = execute(cfg)
                row |= {
                    k: s.get(k)
                    for k in (
                        "status",
                        "train_s",
                        "comm_s",
                        "bytes",
                        "rounds",
                        "final_test_acc",
                        "peak_memory_bytes",
                    )
                }
                info = load_problem(cfg, torch.device("cpu")).info
                stated = protocols.get(name).paper_bytes_per_round(cfg.protocol, info, workers)
                row["bytes_as_stated"] = s.get("bytes") == s.get("rounds", 0) * stated
            except Exception as err:
                row |= {"status": "error", "error": f"{type(err).__name__}: {err}"[:300]}
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny, no compile (CI)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    width, batch, steps = (1.0, 128, 20) if not args.smoke else (1 / 16, 8, 2)
    load = os.getloadavg()
    started = time.perf_counter()
    record: dict[str, Any] = {
        "device": name,
        "gpus": torch.cuda.device_count(),
        "smoke": args.smoke,
    }
    record["throughput"] = throughput(device, width, batch, steps, args.smoke)
    record["resist_compute_ratio"] = resist_ratio(device, width, batch, steps)
    dev = "cuda" if cuda else "cpu"
    record["two_ranks_one_device"] = launcher_runs(
        dev, "gloo", 2, ["ddp", "localsgd", "resist"], args.smoke
    )
    if cuda and torch.cuda.device_count() >= 2:
        record["nccl"] = launcher_runs("cuda", "nccl", 2, ["ddp", "resist"], args.smoke)
    else:
        why = "no GPU" if not cuda else f"{torch.cuda.device_count()} GPU: NCCL needs one per rank"
        record["nccl"] = {"skipped": why}
    memory = launcher_runs(dev, "gloo", 4, ["resist", "localsgd"], args.smoke)
    record["peak_memory_4_workers"] = [
        {
            "protocol": r["protocol"],
            "peak_memory_bytes_per_rank": r.get("peak_memory_bytes"),
            "status": r["status"],
        }
        for r in memory
    ]
    record["wall_s"] = time.perf_counter() - started
    slug = name.replace(" ", "-").lower()
    out = args.out or f"results/bench/gpu-{slug}{'-smoke' if args.smoke else ''}.json"
    rows = record.pop("throughput")
    path = write_record(
        "gpu",
        f"pre-act ResNet-101 width {width}, CIFAR-shaped, batch {batch}",
        round_floats(rows),
        out,
        argv,
        load_before=load,
        **round_floats(record),
    )
    print(f"{name}: ResNet-101 width {width}, batch {batch}")
    for r in rows:
        if "error" in r:
            print(f"  {r['mode']:32} {r['error']}")
        else:
            pct = (
                f" ({r['pct_of_peak']:.1f} % of {r['peak_used_tflops']:g})"
                if "pct_of_peak" in r
                else ""
            )
            print(
                f"  {r['mode']:32} {r['images_per_s']:9.1f} img/s {r['tflops']:8.2f} TFLOP/s{pct}"
            )
    q = record["resist_compute_ratio"]
    print(f"  resist sub-ResNet / full: measured {q['measured_ratio']:.2f}, ", end="")
    print(f"implied by blocks {q['implied_ratio']:.2f}")
    for r in record["two_ranks_one_device"]:
        stated = r.get("bytes_as_stated")
        print(f"  2 ranks, gloo: {r['protocol']:9} {r['status']} bytes as stated: {stated}")
    nccl = record["nccl"]
    print(f"  nccl: {nccl if isinstance(nccl, dict) else [r['status'] for r in nccl]}")
    for r in record["peak_memory_4_workers"]:
        print(
            f"  4 workers: {r['protocol']:9} peak {r['peak_memory_bytes_per_rank']} bytes per rank"
        )
    print(f"recorded in {path} ({record['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
