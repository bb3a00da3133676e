"""The ISBI 2012 EM segmentation challenge's later metrics: foreground-restricted Rand and
information-theoretic scores (Arganda-Carreras et al. 2015, "Crowdsourcing the creation of image
segmentation algorithms for connectomics", Frontiers in Neuroanatomy 9:142), plus the pixel error.

From a membrane map to two segmentations of one slice:

* **S (proposal)**: the membrane probability is thresholded (a pixel is membrane when
  ``prob > threshold``; at 0.5 this is the argmax of a cell / membrane model, ties going to cell) and S
  is the connected components of the non-membrane pixels. **T (truth)**: the connected components of
  the ground-truth non-membrane pixels. Connectivity is **4** by default (pixels touching by an edge:
  the challenge's convention); ``connectivity=8`` also joins pixels touching by a corner.
* **Foreground restriction**: only pixels in some T segment (ground-truth cell interior) count; the
  ground-truth membrane is left out.
* **Predicted membrane inside the truth's foreground** gets label 0 in S. ``background="segment"``
  (default, the convention of ``skimage.metrics.adapted_rand_error``, whose ``ignore_labels`` only
  removes *truth* labels): label 0 is one more S segment. ``background="singletons"`` (the SNEMI3D /
  gala convention): each such pixel is its own S segment.

Scores from the contingency table over the n counted pixels, ``n_ij`` = pixels in S segment i and
T segment j, ``p_ij = n_ij / n``, ``s_i = sum_j p_ij``, ``t_j = sum_i p_ij``:

* Rand split ``= sum_ij p_ij^2 / sum_j t_j^2`` and Rand merge ``= sum_ij p_ij^2 / sum_i s_i^2`` (the
  probability that two pixels drawn with replacement from one T segment, resp. one S segment, are
  also in one segment of the other); **V_rand** = their F-score ``= 2 sum p_ij^2 / (sum s_i^2 + sum t_j^2)``.
  Pairs are drawn with replacement, as in the paper; skimage counts pairs of distinct pixels
  (``sum n_ij (n_ij - 1)`` ...), which differs by O(1 / segment size).
* Information split ``= I(S;T) / H(S)`` and information merge ``= I(S;T) / H(T)``, with
  ``H(S) = -sum_i s_i log s_i``, ``H(T) = -sum_j t_j log t_j``, ``I(S;T) = sum_ij p_ij log(p_ij / (s_i t_j))``
  ``= H(S) + H(T) - H(S,T)``; **V_info** = their F-score ``= 2 I / (H(S) + H(T))``. A zero entropy
  means one segment, so no split (``H(S) = 0``) or no merge (``H(T) = 0``) is possible: that score is 1.
  The variation of information is ``VI = H(S|T) + H(T|S) = H(S) + H(T) - 2 I``.
* **Pixel error** = 1 - pixel accuracy of the thresholded membrane map over every valid pixel.

All scores lie in [0, 1], higher is better (pixel error: lower is better). A slice without ground-truth
foreground has no Rand / information scores (NaN). Over several slices the challenge averages per
slice: :func:`mean_over_slices`. No border thinning (the challenge's final "thinned" variant) is done.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from segkit.errors import SegkitError

__all__ = [
    "SCORES",
    "check_thresholds",
    "contingency",
    "em_report",
    "em_scores",
    "info_scores",
    "mean_over_slices",
    "membrane_class",
    "rand_scores",
    "segments",
    "segmentation_scores",
]

#: Keys of one threshold's scores, in report order.
SCORES = ("pixel_error", "v_rand", "rand_split", "rand_merge", "v_info", "info_split", "info_merge")

_STRUCTURE = {4: ndimage.generate_binary_structure(2, 1), 8: np.ones((3, 3), dtype=bool)}


def segments(foreground: np.ndarray, connectivity: int = 4) -> np.ndarray:
    """Connected components of the ``True`` pixels of a 2-D boolean map: ``int64`` ids 1..k, 0 elsewhere."""
    if connectivity not in _STRUCTURE:
        raise SegkitError(f"connectivity is {connectivity}; expected 4 or 8")
    foreground = np.asarray(foreground, dtype=bool)
    if foreground.ndim != 2:
        raise SegkitError(f"the membrane map has shape {foreground.shape}; expected a 2-D [H, W] array")
    labels, _ = ndimage.label(foreground, structure=_STRUCTURE[connectivity])
    return labels.astype(np.int64)


def contingency(seg: np.ndarray, truth: np.ndarray, background: str = "segment") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts over the pixels where ``truth > 0``: ``(n_ij, s_i, t_j)``, the non-zero cells of the
    contingency table of S = ``seg`` against T = ``truth`` and the segment sizes of S and T (each a 1-D
    ``int64`` array, in no particular order). ``seg == 0`` there is one segment (``background="segment"``)
    or one segment per pixel (``"singletons"``)."""
    seg, truth = np.asarray(seg), np.asarray(truth)
    if seg.shape != truth.shape:
        raise SegkitError(f"segmentation has shape {seg.shape} but truth has {truth.shape}; expected the same shape")
    if background not in ("segment", "singletons"):
        raise SegkitError(f"background is '{background}'; expected 'segment' or 'singletons'")
    fg = truth.reshape(-1) > 0
    s = seg.reshape(-1)[fg].astype(np.int64)
    t = truth.reshape(-1)[fg].astype(np.int64)
    if background == "singletons":
        zero = s == 0
        s = s.copy()
        s[zero] = (s.max(initial=0) + 1) + np.arange(int(zero.sum()), dtype=np.int64)
    if s.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    _, n_ij = np.unique(s * (int(t.max()) + 1) + t, return_counts=True)
    _, s_i = np.unique(s, return_counts=True)
    _, t_j = np.unique(t, return_counts=True)
    return n_ij.astype(np.int64), s_i.astype(np.int64), t_j.astype(np.int64)


def rand_scores(n_ij: np.ndarray, s_i: np.ndarray, t_j: np.ndarray) -> dict[str, float]:
    """``v_rand``, ``rand_split`` and ``rand_merge`` from the counts of :func:`contingency` (NaN when empty)."""
    n_ij, s_i, t_j = (np.asarray(a, dtype=np.float64) for a in (n_ij, s_i, t_j))
    if n_ij.sum() == 0:
        return {"v_rand": math.nan, "rand_split": math.nan, "rand_merge": math.nan}
    both, ss, tt = float(n_ij @ n_ij), float(s_i @ s_i), float(t_j @ t_j)
    return {"v_rand": 2.0 * both / (ss + tt), "rand_split": both / tt, "rand_merge": both / ss}


def _entropy(counts: np.ndarray, n: float) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: no -0.0


def info_scores(n_ij: np.ndarray, s_i: np.ndarray, t_j: np.ndarray) -> dict[str, float]:
    """``v_info``, ``info_split``, ``info_merge`` and the entropies (bits) ``h_s``, ``h_t``, ``mutual_info``
    from the counts of :func:`contingency` (NaN when empty)."""
    n_ij, s_i, t_j = (np.asarray(a, dtype=np.float64) for a in (n_ij, s_i, t_j))
    n = float(n_ij.sum())
    if n == 0:
        return dict.fromkeys(("v_info", "info_split", "info_merge", "h_s", "h_t", "mutual_info"), math.nan)
    h_s, h_t, h_st = _entropy(s_i, n), _entropy(t_j, n), _entropy(n_ij, n)
    mi = max(h_s + h_t - h_st, 0.0)  # >= 0 up to rounding
    eps = 1e-12
    split = 1.0 if h_s <= eps else min(mi / h_s, 1.0)
    merge = 1.0 if h_t <= eps else min(mi / h_t, 1.0)
    v_info = 1.0 if h_s + h_t <= eps else min(2.0 * mi / (h_s + h_t), 1.0)
    return {"v_info": v_info, "info_split": split, "info_merge": merge, "h_s": h_s, "h_t": h_t, "mutual_info": mi}


def segmentation_scores(seg: np.ndarray, truth: np.ndarray, background: str = "segment") -> dict[str, float]:
    """Rand and information scores of the instance map ``seg`` (S) against ``truth`` (T, 0 = not counted)."""
    table = contingency(seg, truth, background)
    return {**rand_scores(*table), **info_scores(*table)}


def em_scores(
    prob_membrane: np.ndarray,
    truth_membrane: np.ndarray,
    thresholds: Iterable[float] = (0.5,),
    connectivity: int = 4,
    background: str = "segment",
    valid: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """One slice's scores at each threshold: a list of dicts with ``threshold``, :data:`SCORES`,
    ``segments`` / ``truth_segments`` (counts of S and T segments) and the entropies.

    ``prob_membrane``: ``[H, W]`` membrane probability in [0, 1] (or a 0/1 label map); ``truth_membrane``:
    ``[H, W]`` boolean, True = membrane. ``valid`` (optional boolean map): pixels outside it count nowhere
    (e.g. ``ignore_index``)."""
    prob = np.asarray(prob_membrane, dtype=np.float64)
    truth_mem = np.asarray(truth_membrane, dtype=bool)
    if prob.shape != truth_mem.shape or prob.ndim != 2:
        raise SegkitError(f"membrane probability has shape {prob.shape} and truth {truth_mem.shape}; expected the same 2-D shape")
    valid = np.ones(prob.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    truth = segments(~truth_mem & valid, connectivity)
    n_valid = int(valid.sum())
    rows = []
    for threshold in thresholds:
        pred_mem = prob > float(threshold)
        seg = segments(~pred_mem & valid, connectivity)
        wrong = int(np.count_nonzero((pred_mem != truth_mem) & valid))
        rows.append({
            "threshold": float(threshold),
            "pixel_error": wrong / n_valid if n_valid else math.nan,
            **segmentation_scores(seg, truth, background),
            "segments": int(seg.max()),
            "truth_segments": int(truth.max()),
        })
    return rows


def mean_over_slices(per_slice: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, float]]:
    """Per threshold, the mean over slices of every score (each slice weighs the same, as in the
    challenge; slices with a NaN score are left out of that score's mean). ``per_slice``: one
    :func:`em_scores` result per slice, all with the same thresholds."""
    if not per_slice:
        return []
    out = []
    for k, first in enumerate(per_slice[0]):
        row: dict[str, float] = {"threshold": float(first["threshold"])}
        for key in (*SCORES, "segments", "truth_segments"):
            values = np.array([float(s[k][key]) for s in per_slice], dtype=np.float64)
            row[key] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
        out.append(row)
    return out


# --------------------------------------------------------------------------------------------------
# evaluation wiring (segkit.eval)


def membrane_class(fmt: str, name: str, format_options: Mapping[str, Any], class_names: Sequence[str], setting: Any) -> int | None:
    """The class id of the membrane when the EM scores are on, else None. ``setting``: ``auto`` (on for
    the isbi2012 format or data name, or when ``data.format_options.positive`` names a membrane class),
    true (on; the membrane is found the same way, else the class named ``membrane``) or false."""
    if isinstance(setting, str) and setting.lower() in ("true", "false"):
        setting = setting.lower() == "true"
    if setting is False or setting is None:
        return None
    if setting is not True and setting != "auto":
        raise SegkitError(f"em_scores is '{setting}'; expected auto, true or false")
    names = [str(c) for c in class_names]
    positive = format_options.get("positive")
    if fmt == "isbi2012":
        # the reader writes class 1 = format_options.positive (membrane by default), class 0 = the other
        return 1 if (positive or "membrane") == "membrane" else 0
    if isinstance(positive, str) and "membrane" in positive.lower() and positive in names:
        return names.index(positive)
    if name == "isbi2012" and "membrane" in names:
        return names.index("membrane")
    if setting is True:
        matches = [i for i, c in enumerate(names) if c.lower() == "membrane"]
        if not matches:
            raise SegkitError(f"em_scores=true but data '{name}' has no membrane class (classes {names}); expected a class named 'membrane'")
        return matches[0]
    return None


def check_thresholds(thresholds: Iterable[Any]) -> list[float]:
    """``em_thresholds`` as floats; a SegkitError unless it is a non-empty list of numbers in [0, 1]."""
    try:
        values = [float(t) for t in thresholds]
    except (TypeError, ValueError):
        values = []
    if not values or any(not 0.0 <= t <= 1.0 for t in values):
        raise SegkitError(f"em_thresholds is {thresholds}; expected a non-empty list of probabilities in [0, 1], e.g. [0.5]")
    return values


def _f(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def em_report(
    membrane_probs: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    stems: Sequence[str],
    membrane: int,
    thresholds: Sequence[float],
    split: str,
    out: str | Path,
    ignore_index: int = 255,
    connectivity: int = 4,
    background: str = "segment",
) -> dict[str, Any]:
    """EM scores of every slice at every threshold, their mean over slices, ``em_per_slice.csv`` in
    ``out`` and a Markdown section. Returns ``{"mean_over_slices": {"em/<score>@<t>": value}, "per_slice",
    "thresholds", ..., "markdown"}``."""
    thresholds = check_thresholds(thresholds)
    per_slice = [
        em_scores(prob, mask == membrane, thresholds, connectivity, background, valid=mask != ignore_index)
        for prob, mask in zip(membrane_probs, masks, strict=True)
    ]
    mean = mean_over_slices(per_slice)
    rows = [{"image": stem, **r} for stem, slice_rows in zip(stems, per_slice, strict=True) for r in slice_rows]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if rows:
        with (out / "em_per_slice.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    flat = {f"em/{key}@{m['threshold']:g}": (None if math.isnan(m[key]) else m[key]) for m in mean for key in SCORES}
    conventions = (
        f"S = {connectivity}-connected components of the pixels with membrane probability <= threshold, T = "
        f"{connectivity}-connected components of the ground-truth non-membrane pixels; only pixels in some T "
        "segment count (foreground-restricted); predicted membrane there is "
        + ("one S segment (label 0, as skimage.metrics.adapted_rand_error)" if background == "segment" else "one S segment per pixel")
        + "; pairs drawn with replacement (sum p_ij^2); entropies in bits; no border thinning."
    )
    lines = [
        f"Split **{split}** ({len(stems)} slices): scores of each slice, then their **mean over slices** (each "
        "slice weighs the same, as the challenge averages). V_rand = F-score of the Rand split and merge scores, "
        "V_info = F-score of the information-theoretic split and merge scores (Arganda-Carreras et al. 2015); "
        "higher is better, at most 1. Pixel error = 1 - pixel accuracy of the thresholded membrane map. "
        + conventions
        + (" Several thresholds are reported side by side; choose one on the validation split, never on test." if len(thresholds) > 1 else ""),
        "",
        "| threshold | pixel error | V_rand | Rand split | Rand merge | V_info | info split | info merge | segments (pred / truth) |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {m['threshold']:g} | " + " | ".join(_f(m[k]) for k in SCORES) + f" | {m['segments']:.1f} / {m['truth_segments']:.1f} |"
            for m in mean
        ],
        "",
        "Per slice (`em_per_slice.csv` has every score):",
        "",
        "| slice | threshold | pixel error | V_rand | V_info |",
        "|---|---|---|---|---|",
        *[f"| {r['image']} | {r['threshold']:g} | {_f(r['pixel_error'])} | {_f(r['v_rand'])} | {_f(r['v_info'])} |" for r in rows],
    ]
    return {
        "mean_over_slices": flat,
        "mean_over_slices_rows": mean,
        "per_slice": rows,
        "thresholds": thresholds,
        "split": split,
        "membrane_class": int(membrane),
        "connectivity": connectivity,
        "background": background,
        "aggregation": "mean over slices of each slice's scores (not pooled)",
        "conventions": conventions,
        "markdown": "\n".join(lines),
    }
