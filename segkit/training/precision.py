"""Choosing the numeric precision: mixed precision on GPUs, fp32 on CPUs without fast native bf16.

CPU feature flags are not enough: the development machines report ``avx512_bf16`` yet run bf16
matmuls ~5x slower than fp32. So the CPU is asked by a ~10 ms measurement, once per process.
"""

from __future__ import annotations

import functools
import time

import torch

MIXED = {"16", "16-mixed", "bf16", "bf16-mixed", "16-true", "bf16-true", "transformer-engine"}


@functools.lru_cache(maxsize=1)
def cpu_bf16_is_fast(size: int = 192, repeats: int = 3) -> bool:
    """True when a bf16 matmul on this CPU is at least as fast as fp32 (measured)."""
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        a @ b  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        timings[dtype] = time.perf_counter() - start
    return timings[torch.bfloat16] <= timings[torch.float32]


def runs_on_cpu(accelerator: str) -> bool:
    """Whether ``trainer.accelerator`` resolves to the CPU on this machine."""
    acc = str(accelerator).lower()
    if acc == "cpu":
        return True
    if acc in ("auto", "gpu", "cuda"):
        return not torch.cuda.is_available()
    return False  # mps, tpu, ...: leave it to Lightning


def resolve_precision(requested: str | int, accelerator: str) -> tuple[str, str | None]:
    """The precision to hand Lightning for ``trainer.precision=requested`` and a note to print (or None).

    ``auto``: ``bf16-mixed`` on GPUs with bf16, ``16-mixed`` on other GPUs, ``32-true`` on CPUs.
    Any mixed/half precision on a CPU becomes ``32-true`` unless it is ``bf16-mixed`` and the CPU
    runs bf16 at least as fast as fp32.
    """
    req = str(requested)
    on_cpu = runs_on_cpu(accelerator)
    if req == "auto":
        if on_cpu:
            return "32-true", None
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", None
        return "16-mixed", None
    if on_cpu and req in MIXED:
        if req == "bf16-mixed" and cpu_bf16_is_fast():
            return req, None
        return "32-true", (
            f"trainer.precision={req} asked for mixed precision, but this run is on a CPU without fast native "
            "bf16 (measured), where it would be many times slower: using 32-true"
        )
    return req, None
