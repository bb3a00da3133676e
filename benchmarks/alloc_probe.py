"""``python -m benchmarks.alloc_probe MODE STEPS SIZE THREADS``: one fresh process of the allocator
benchmark (``benchmarks.train_bench.allocator``), kept free of Lightning and Hydra so that it starts fast.
Prints one JSON line."""

from __future__ import annotations

import json
import sys
import time

import torch

from benchmarks.common import PlainStep, data_stub, per_step_usage, synthetic_tensors, usage

BATCH = 8


def _probe_allocator(mode: str, steps: int, size: int, threads: int) -> dict:
    """In a fresh process: plain U-Net training steps (batch 8) with the C allocator as ``mode`` leaves it
    (``segkit.runtime.tune_allocator``); per-step seconds, page faults and system seconds."""
    from segkit.models import UNet
    from segkit.runtime import tune_allocator
    from segkit.training.losses import build_loss

    note = tune_allocator(mode)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = UNet(in_channels=3, num_classes=3, depth=4, base_width=16).to(memory_format=torch.channels_last)
    step = PlainStep(net, build_loss(name="ce_dice", num_classes=3, ignore_index=255), *data_stub().norm_mean_std)
    x, m = synthetic_tensors(BATCH, size)
    for _ in range(2):
        step(x, m)
    times, marks = [], [usage()]
    for _ in range(steps):
        t = time.perf_counter()
        step(x, m)
        times.append(time.perf_counter() - t)
        marks.append(usage())
    faults, sys_s = per_step_usage(marks, 0)
    return {"mode": mode, "note": note, "step_s": times, "faults_per_step": faults, "sys_s_per_step": sys_s}

if __name__ == "__main__":
    print(json.dumps(_probe_allocator(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
