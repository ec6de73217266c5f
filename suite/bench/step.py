"""One training step, one process, in each way of computing it: what makes it cheaper.

The full model at a given work (default: pre-act ResNet-101 x1/8 on 32x32x3 inputs of
100 classes, batch 128, SGD with momentum, 1 thread), timed for ``--steps`` steps after
one untimed first step (which, compiled, is the compilation), in each mode:

- ``eager``: the suite's default (its model and SGD as ``suite.problem.build`` and the
  optimizer config make them, channels-last);
- ``nchw``: eager in the contiguous layout;
- ``compile_model`` / ``compile_blocks``: ``torch.compile`` of the whole network, or
  block by block as ``train.compile`` does (``suite.compiled``);
- ``flush_denormal``: denormal floats flushed to zero;
- ``foreach``: SGD's multi-tensor update.

Modes run in separate processes, alternating over ``--repeats``; medians are kept.

    python -m suite.bench.step --out results/bench/step-r101-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

MODES = ("eager", "nchw", "compile_model", "compile_blocks", "flush_denormal", "foreach")


def one(mode: str, steps: int, batch: int, size: int, classes: int, threads: int) -> dict:
    """Time ``steps`` steps of ``mode`` in this process: median ms and the first step."""
    import torch
    import torch.nn.functional as F

    from suite.compiled import compile_in_place
    from suite.config import RunConfig, TrainConfig
    from suite.datasources import data_config
    from suite.problem import build

    torch.set_num_threads(threads)
    if mode == "flush_denormal":
        torch.set_flush_denormal(True)
    # The default model and optimizer as the suite builds them (suite.problem.build:
    # seeded, channels-last unless ``nchw``), on the shape of the synthetic inputs.
    cfg = RunConfig(
        data=data_config("synthetic", num_classes=classes, image_size=size, num_train=batch),
        train=TrainConfig(channels_last=mode != "nchw"),
    )
    model = build(cfg, cfg.data.load(), torch.device("cpu"))
    opt = cfg.optim.build(model.parameters())
    for group in opt.param_groups:
        group["foreach"] = mode == "foreach"  # torch's default on CPU: the per-tensor loop
    if mode == "compile_model":
        model.compile()
    elif mode == "compile_blocks":
        compile_in_place(model)
    layout = torch.contiguous_format if mode == "nchw" else torch.channels_last
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=layout)
    y = torch.randint(0, classes, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1000 * statistics.median(times), "first_step_s": first}


def main(argv: list[str] | None = None) -> None:
    from suite.bench import write_record

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/bench/step-r101-cpu.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    shape = (args.steps, args.batch, args.image_size, args.classes, args.threads)
    if args.one:
        print(json.dumps(one(args.one, *shape)))
        return
    load = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.modes}
    for _ in range(args.repeats):
        for mode in args.modes:
            cmd = [sys.executable, "-m", "suite.bench.step", *(argv or sys.argv[1:])]
            out = subprocess.run([*cmd, "--one", mode], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{mode} failed:\n{out.stderr[-2000:]}")
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = statistics.median(r["median_ms"] for r in runs["eager"]) if "eager" in runs else None
    rows = []
    for mode, found in runs.items():
        ms = statistics.median(r["median_ms"] for r in found)
        rows.append(
            {
                "mode": mode,
                "step_ms": ms,
                "step_ms_each": [r["median_ms"] for r in found],
                "first_step_s": [r["first_step_s"] for r in found],
                "vs_eager": ms / base if base else None,
            }
        )
    work = (
        f"preact_resnet101 width 0.125, {args.image_size}x{args.image_size}x3, "
        f"{args.classes} classes, batch {args.batch}, {args.threads} thread(s), one process"
    )
    path = write_record("step", work, rows, args.out, argv, load_before=load)
    print("| mode | step (ms) | each repeat | first step (s) | ÷ eager |")
    print("|---|---|---|---|---|")
    for r in rows:
        each = ", ".join(f"{v:.0f}" for v in r["step_ms_each"])
        first = ", ".join(f"{v:.1f}" for v in r["first_step_s"])
        ratio = f"{r['vs_eager']:.2f}" if r["vs_eager"] else "—"
        print(f"| {r['mode']} | {r['step_ms']:.0f} | {each} | {first} | {ratio} |")
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
