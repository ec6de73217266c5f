"""Layer-parallel (AuxNet) training vs serial training: measured speedup and its bound.

Serial training is ``protocol=single`` on one worker; layer-parallel is ``protocol=auxnet``
with K = S modules. Both train the same model on the same data for the same budget
(data-epochs; every auxnet rank sees every batch). The paper's bound on the per-epoch
speedup is (T_d + T_f + T_b) / (T_d + t_ψ + t_f^λ + t_b^λ) with T_d the data time,
T_f + T_b the serial forward and backward, t_ψ the AuxNet time and t_f^λ, t_b^λ one
module's local forward and backward (the slowest module; forward includes waiting for
the neighbours' activations). T_d is timed by drawing the budget's batches alone,
T_f + T_b as the serial training clock minus T_d, the rest from the protocol's own clock.

    python -m suite.bench.auxnet --workers 2 4 --repeats 2
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from typing import Any

import torch

import protocols
from suite.bench import write_record
from suite.config import LaunchConfig, RunConfig, TrainConfig
from suite.data import TrainBatches, load_dataset
from suite.launch import execute


def _config(name: str, workers: int, args: argparse.Namespace, results: str) -> RunConfig:
    base = RunConfig(protocol=protocols.parse_config({"name": name}))
    return dataclasses.replace(
        base,
        workers=workers,
        train=TrainConfig(data_epochs=args.data_epochs, eval_every=args.data_epochs),
        launcher=LaunchConfig(device="cpu", progress=False),
        results_dir=results,
        force=True,
    )


def data_time(cfg: RunConfig, steps: int) -> float:
    """Seconds to draw ``steps`` batches (with augmentation), as every rank does."""
    batches = TrainBatches(
        load_dataset(cfg.data),
        0,
        1,
        cfg.data.batch_size,
        cfg.data.sharding,
        cfg.seed,
        torch.device("cpu"),
        cfg.data.augment,
    )
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return time.perf_counter() - start


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for workers in [1, *args.workers]:
                name = "single" if workers == 1 else "auxnet"
                summary = execute(_config(name, workers, args, tmp))
                assert summary["status"] == "completed", summary
                runs.setdefault(f"{name}-{workers}", []).append(dict(summary))
        serial = runs["single-1"]
        t_serial = statistics.median(s["train_s"] for s in serial)
        t_data = data_time(_config("single", 1, args, tmp), serial[0]["steps"])
        rows = []
        for workers in args.workers:
            par = runs[f"auxnet-{workers}"]
            stats = {
                k: statistics.median(s["protocol_stats"][k] for s in par)
                for k in ("aux_s", "forward_s", "backward_s")
            }
            t_par = statistics.median(s["train_s"] for s in par)
            local = stats["aux_s"] + stats["forward_s"] + stats["backward_s"]
            rows.append(
                {
                    "workers": workers,
                    "T_d": t_data,
                    "T_f_plus_T_b": t_serial - t_data,
                    "t_aux": stats["aux_s"],
                    "t_f_local": stats["forward_s"],
                    "t_b_local": stats["backward_s"],
                    "predicted_bound": t_serial / (t_data + local),
                    "serial_train_s": t_serial,
                    "auxnet_train_s": t_par,
                    "measured_speedup": t_serial / t_par,
                    "serial_acc": statistics.median(s["final_test_acc"] for s in serial),
                    "auxnet_acc": statistics.median(s["final_test_acc"] for s in par),
                    "all": {"serial": serial, "auxnet": par},
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--data-epochs", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="results/bench/auxnet-cpu.json")
    args = parser.parse_args(argv)
    rows = measure(args)
    out = write_record(
        "auxnet", "preact_resnet101 width 0.125, digits 8x8, batch 32", rows, args.out, argv
    )
    print(
        "| workers | T_d (s) | T_f+T_b (s) | t_aux (s) | t_f local (s) | t_b local (s) "
        "| bound | measured speedup | serial acc | auxnet acc |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['T_d']:.2f} | {r['T_f_plus_T_b']:.2f} | {r['t_aux']:.2f} | "
            f"{r['t_f_local']:.2f} | {r['t_b_local']:.2f} | {r['predicted_bound']:.2f}× | "
            f"{r['measured_speedup']:.2f}× | {r['serial_acc']:.3f} | {r['auxnet_acc']:.3f} |"
        )
    print(f"recorded in {out}")


if __name__ == "__main__":
    main()
