"""Paired statistics of two runs scored on the same images: mean difference, percentile bootstrap CI,
Wilcoxon signed-rank test and a verdict."""

from __future__ import annotations

from typing import Any

import numpy as np

from segkit.errors import SegkitError

ALPHA = 0.05


# ---------------------------------------------------------------------------------------------- statistics
def bootstrap_ci(d: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``d``: ``n_boot`` resamples of the images with replacement,
    indices from ``np.random.default_rng(seed).integers(0, n, (n_boot, n))``."""
    d = np.asarray(d, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def wilcoxon_test(d: np.ndarray) -> tuple[float, str, int]:
    """Two-sided Wilcoxon signed-rank p of ``d`` (zeros dropped), the method used, and the number of zeros."""
    from scipy.stats import wilcoxon

    d = np.asarray(d, dtype=np.float64)
    nonzero = d[d != 0]
    zeros = int(d.size - nonzero.size)
    if nonzero.size == 0:
        return 1.0, "every difference is zero", zeros
    ties = np.unique(np.abs(nonzero)).size < nonzero.size
    method = "exact" if nonzero.size <= 50 and not ties else "approx"
    p = float(wilcoxon(nonzero, alternative="two-sided", method=method).pvalue)
    text = "exact null distribution" if method == "exact" else "normal approximation (tie-corrected)"
    return p, text, zeros


def paired_stats(a, b, n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Means, mean paired difference B - A, its percentile bootstrap 95 % CI and the Wilcoxon p."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise SegkitError(f"paired values need two equal-length non-empty lists; got {a.shape} and {b.shape}")
    d = b - a
    low, high = bootstrap_ci(d, n_boot, seed)
    p, method, zeros = wilcoxon_test(d)
    return {"n": int(d.size), "mean_a": float(a.mean()), "mean_b": float(b.mean()), "mean_diff": float(d.mean()),
            "median_diff": float(np.median(d)), "ci_low": low, "ci_high": high, "p_wilcoxon": p, "wilcoxon_method": method,
            "n_zero_diff": zeros, "n_boot": n_boot, "seed": seed}


def verdict(stats: dict[str, Any], alpha: float = ALPHA) -> str:
    """``B better`` / ``A better`` when the Wilcoxon p is below ``alpha`` (direction: the sign of the mean
    difference), else ``no significant difference``."""
    if stats["p_wilcoxon"] < alpha and stats["mean_diff"] != 0:
        return "B better" if stats["mean_diff"] > 0 else "A better"
    return "no significant difference"
