"""A process's own resident memory, for the benchmarks that run each case in a fresh process (no torch import)."""

from __future__ import annotations

import resource
from pathlib import Path


def _proc_status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    """This process's resident memory now (VmRSS), MB."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), MB. Not ``ru_maxrss``: Linux carries a parent's high-water
    mark into a child through fork and exec, so a case started from a bench process that had grown to 4 GB
    reported 4 GB whatever it used itself (measured: a child of a 2 GB parent, 2,062 MB by ``ru_maxrss``,
    13 MB by VmHWM). Falls back to ``ru_maxrss`` where /proc has no VmHWM."""
    peak = _proc_status_mb("VmHWM")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
