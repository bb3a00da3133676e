"""Process-wide settings that make CPU training and prediction faster: the C allocator.

glibc's ``malloc`` serves every block above ``M_MMAP_THRESHOLD`` (at most 32 MB by default) with a fresh
``mmap`` and gives it back with ``munmap`` when it is freed. A U-Net training step at 8 x 256x256 frees and
re-allocates dozens of activations and gradients of 8-34 MB, so every step maps fresh pages and the
kernel zeroes them on first touch: about 150,000 page faults and 0.5 s of system time per step measured
on a 2-core development machine (10 % of the step's CPU time, more on a busy virtual machine).
:func:`tune_allocator` raises the mmap threshold and the trim threshold, so freed activations stay in the
heap and the next step reuses them (page faults per step fall to about a thousand; BENCHMARKS.md,
section 7). The cost: memory freed by the process is kept for reuse rather than returned to the system,
so the resident size stays at the peak of what was in use, which for a training or prediction
process is the size it reaches anyway.

Set ``cpu_allocator: default`` (a top-level key of ``conf/train.yaml``, ``conf/predict.yaml`` and ``conf/eval.yaml``) to keep glibc's behaviour, or
``MALLOC_MMAP_THRESHOLD_`` in the environment, which segkit then leaves alone. Other C libraries (musl,
macOS, Windows) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap (activations of large batches included); glibc before 2.35
#: refuses values above 32 MB, which is then what segkit sets
MMAP_THRESHOLD = 1 << 30
MMAP_THRESHOLD_FALLBACK = 32 << 20
#: freed memory at the top of the heap is returned to the system only beyond this
TRIM_THRESHOLD = (1 << 31) - 1

_state: dict[str, str] = {}


def tune_allocator(mode: str = "tuned") -> str:
    """Apply ``mode`` (``tuned`` or ``default``) once per process; returns what was done, in words."""
    if mode not in ("tuned", "default"):
        from segkit.errors import SegkitError

        raise SegkitError(f"cpu_allocator is {mode!r}; expected tuned or default")
    if "done" in _state:
        return _state["done"]
    if mode == "default":
        return _remember("glibc's default allocator settings (cpu_allocator=default)")
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return _remember("allocator settings left to the environment (MALLOC_*_THRESHOLD_ is set)")
    libc = _glibc()
    if libc is None:
        return _remember("allocator not tuned: not glibc")
    threshold = MMAP_THRESHOLD if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 else MMAP_THRESHOLD_FALLBACK
    if threshold == MMAP_THRESHOLD_FALLBACK and libc.mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        return _remember("allocator not tuned: mallopt refused the mmap threshold")
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return _remember(f"glibc malloc: blocks up to {threshold >> 20} MB reused from the heap (cpu_allocator=tuned)")


def _remember(text: str) -> str:
    _state["done"] = text
    return text


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc

