"""Object-level analysis of label maps: instances, per-object measurements, matching, size statistics.

Conventions used throughout this module:

* **Label maps** are ``[H, W]`` integer arrays of class ids (the masks a segmentation model predicts
  or a person drew). **Instance maps** are ``[H, W]`` ``int32`` arrays of object ids, ``0`` meaning
  "no object"; they always come with a ``dict`` mapping every object id to its class id.
* **Connectivity.** Objects are the connected components of the pixels of one class under
  **8-connectivity** (pixels touching by an edge *or a corner* belong to the same object). With an
  ``edge_class`` (a cell / edge / other labelling in which touching cells are separated by a thin
  line of edge pixels) the cell *interiors* seed a watershed: see :func:`instances`.
* **IoU** of two objects A and B is ``|A ∩ B| / |A ∪ B|`` counted in pixels.
* **Size statistics** use the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``; Hodges
  1958, "The significance probability of the Smirnov two-sample test"): the statistic D is the
  largest vertical distance between the two empirical cumulative distributions, and the p-value is
  the probability of a D at least that large if both samples came from one continuous distribution.
"""

from __future__ import annotations

import csv
import functools
import gc
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, stats
from scipy.optimize import linear_sum_assignment
from skimage.measure import regionprops
from skimage.segmentation import watershed

from segkit.errors import SegkitError
from segkit.evaluation.object_stats import TiledObjects, _Progress, iter_windows

__all__ = [
    "OBJECT_COLUMNS",
    "UM_COLUMNS",
    "compare_sizes",
    "instances",
    "match_objects",
    "object_columns",
    "object_table",
    "object_table_tiled",
    "size_distribution_test",
    "size_histogram_png",
    "write_objects_csv",
]

#: Columns of :func:`object_table`, in order; ``UM_COLUMNS`` follow when a pixel size is given.
OBJECT_COLUMNS = (
    "image",
    "id",
    "class",
    "area",
    "perimeter",
    "centroid_y",
    "centroid_x",
    "major_axis",
    "minor_axis",
    "eccentricity",
    "solidity",
    "touches_border",
)
UM_COLUMNS = ("area_um2", "perimeter_um", "major_axis_um", "minor_axis_um")

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity structuring element
_FOUR = ndimage.generate_binary_structure(2, 1)  # 4-connectivity


# --------------------------------------------------------------------------------------------------
# instances


def _check_label_map(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise SegkitError(f"{name} has shape {labels.shape}; expected a 2-D [H, W] array")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise SegkitError(f"{name} has dtype {labels.dtype}; expected an integer array of ids")
    return labels


def instances(
    labels: np.ndarray,
    object_classes: Sequence[int],
    edge_class: int | None = None,
    background: int = 0,
    *,
    seed_connectivity: int = 4,
) -> tuple[np.ndarray, dict[int, int]]:
    """Split a label map into objects.

    Without ``edge_class`` every object is an 8-connected component of the pixels of one class in
    ``object_classes``; ids run from 1 in the order of ``object_classes``, then in raster order of
    each component's first pixel.

    With ``edge_class`` (touching cells separated by edge pixels), the objects are grown by a
    watershed (``skimage.segmentation.watershed``): the seeds are the connected components of the
    interiors (the pixels of each class in ``object_classes``), the flooded region is the interiors
    plus the edge pixels, and the flooded relief is the Euclidean distance to the nearest interior
    pixel, so each edge pixel joins the nearest cell reachable through the region (ties go to the
    cell that reaches it first). Edge pixels that touch no interior at all stay ``0``.

    Seeds use **4-connectivity** by default (``seed_connectivity=4``): a 1-pixel edge line drawn at
    an angle is only 8-connected, and the interiors on its two sides touch diagonally through it, so
    8-connected seeds would merge the cells the line is meant to separate (an 8-connected curve
    separates 4-connected regions). Pass ``seed_connectivity=8`` for thin diagonal interiors that
    are not delimited that way. The watershed itself floods with 8-connectivity.

    Args:
        labels: ``[H, W]`` integer class ids.
        object_classes: the class ids that make objects (e.g. ``[1]`` for "cell").
        edge_class: the class id of the separating edge, or ``None`` for plain connected components.
        background: the background class id; it may not be an object or the edge class.
        seed_connectivity: 4 or 8, the connectivity of the interior seeds (only with ``edge_class``).

    Returns:
        ``(inst, inst_class)``: ``[H, W]`` ``int32`` object ids (0 = no object) and ``{id: class}``.
    """
    labels = _check_label_map(labels, "the label map")
    classes = [int(c) for c in object_classes]
    if not classes:
        raise SegkitError("object_classes is empty; expected at least one class id that makes objects")
    if len(set(classes)) != len(classes):
        raise SegkitError(f"object_classes {classes} repeats a class; expected each class id once")
    if background in classes:
        raise SegkitError(
            f"the background class {background} is in object_classes {classes}; expected it not to be"
        )
    if edge_class is not None and (edge_class in classes or edge_class == background):
        raise SegkitError(
            f"edge_class {edge_class} is also an object class or the background ({classes}, background "
            f"{background}); expected a class of its own"
        )
    if seed_connectivity not in (4, 8):
        raise SegkitError(f"seed_connectivity is {seed_connectivity}; expected 4 or 8")

    structure = _EIGHT if edge_class is None or seed_connectivity == 8 else _FOUR
    comps = np.zeros(labels.shape, dtype=np.int32)
    inst_class: dict[int, int] = {}
    next_id = 1
    for c in classes:
        comp, n = ndimage.label(labels == c, structure=structure)
        if n:
            on = comp > 0
            comps[on] = comp[on] + (next_id - 1)
            inst_class.update({next_id + i: c for i in range(n)})
            next_id += n
    if edge_class is None or not inst_class:
        return comps, inst_class

    region = (comps > 0) | (labels == edge_class)
    relief = ndimage.distance_transform_edt(comps == 0)
    inst = watershed(relief, markers=comps, mask=region, connectivity=2)
    return inst.astype(np.int32, copy=False), inst_class


# --------------------------------------------------------------------------------------------------
# per-object measurements


def _present_ids(inst: np.ndarray) -> np.ndarray:
    ids = np.unique(inst)
    return ids[ids != 0]


def _check_classes_known(ids: Iterable[int], inst_class: Mapping[int, int], name: str) -> None:
    missing = [int(i) for i in ids if int(i) not in inst_class]
    if missing:
        raise SegkitError(
            f"{name} has object ids {missing[:5]}{' ...' if len(missing) > 5 else ''} without a class; "
            "expected every non-zero id in the class dictionary"
        )


def _check_pixel_size(pixel_size: float | None) -> None:
    if pixel_size is not None and not (math.isfinite(pixel_size) and pixel_size > 0):
        raise SegkitError(f"pixel_size is {pixel_size}; expected a positive number of micrometres per pixel")


def _class_of(ids: np.ndarray, inst_class: Mapping[int, int], n_names: int, name: str) -> np.ndarray:
    """Class id of every object id (vectorised :func:`_check_classes_known` and the class-name check)."""
    if not ids.size:
        return np.zeros(0, dtype=np.int64)
    keys = np.fromiter((int(k) for k in inst_class), dtype=np.int64, count=len(inst_class))
    vals = np.fromiter((int(v) for v in inst_class.values()), dtype=np.int64, count=len(inst_class))
    order = np.argsort(keys, kind="stable")
    keys, vals = keys[order], vals[order]
    pos = np.clip(np.searchsorted(keys, ids), 0, max(keys.size - 1, 0))
    found = (keys[pos] == ids) if keys.size else np.zeros(ids.size, dtype=bool)
    if not found.all():
        _check_classes_known(ids[~found][:6].tolist(), inst_class, name)
    cls = vals[pos]
    bad = (cls < 0) | (cls >= n_names)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SegkitError(
            f"object {int(ids[i])} has class {int(cls[i])}; expected a class id below {n_names} (the number of class names)"
        )
    return cls


def _rows(cols: Mapping[str, np.ndarray], class_of: np.ndarray, class_names: Sequence[str],
          pixel_size: float | None, image: str) -> list[dict[str, Any]]:
    """:data:`OBJECT_COLUMNS` (+ :data:`UM_COLUMNS`) rows from :class:`TiledObjects` columns."""
    n = int(cols["id"].size)
    if not n:
        return []
    names = np.array(list(class_names), dtype=object)[class_of].tolist()
    values: list[list[Any]] = [
        [image] * n,
        cols["id"].tolist(),
        names,
        cols["area"].tolist(),
        cols["perimeter"].tolist(),
        cols["centroid_y"].tolist(),
        cols["centroid_x"].tolist(),
        cols["major_axis"].tolist(),
        cols["minor_axis"].tolist(),
        cols["eccentricity"].tolist(),
        cols["solidity"].tolist(),
        cols["touches_border"].tolist(),
    ]
    keys: tuple[str, ...] = OBJECT_COLUMNS
    if pixel_size is not None:
        values += [
            (cols["area"] * pixel_size**2).tolist(),
            (cols["perimeter"] * pixel_size).tolist(),
            (cols["major_axis"] * pixel_size).tolist(),
            (cols["minor_axis"] * pixel_size).tolist(),
        ]
        keys = OBJECT_COLUMNS + UM_COLUMNS
    make = _row_maker(keys)
    paused = gc.isenabled()
    gc.disable()  # a million small dicts would otherwise trigger many full collections
    try:
        return list(map(make, *values))
    finally:
        if paused:
            gc.enable()


@functools.cache
def _row_maker(keys: tuple[str, ...]) -> Callable[..., dict[str, Any]]:
    """``f(v0, v1, ...) -> {keys[0]: v0, ...}`` as one dict display (constant keys: about twice as fast
    as ``dict(zip(keys, values))``)."""
    if not set(keys) <= set(OBJECT_COLUMNS + UM_COLUMNS):  # only this module's own column names reach eval
        raise ValueError(f"unknown object columns {sorted(set(keys) - set(OBJECT_COLUMNS + UM_COLUMNS))}")
    args = ", ".join(f"v{i}" for i in range(len(keys)))
    body = ", ".join(f"{k!r}: v{i}" for i, k in enumerate(keys))
    return eval(f"lambda {args}: {{{body}}}")  # noqa: S307 - keys are this module's column names


#: Objects above which a long measurement shows a progress bar (only when stderr is a terminal).
PROGRESS_MIN_OBJECTS = 200_000


def _measure(acc: TiledObjects, windows: Iterable[tuple[int, int, np.ndarray]], n_tiles: int,
             progress: bool | None, desc: str) -> dict[str, np.ndarray]:
    bar = _Progress(n_tiles, progress, PROGRESS_MIN_OBJECTS, desc)
    try:
        for y0, x0, win in windows:
            acc.add(y0, x0, win)
            bar.update(acc.objects_seen)
    finally:
        bar.close()
    return acc.columns()


def _strip_rows(width: int) -> int:
    """Rows per strip of a whole-image measurement: about 2^21 pixels, so temporaries stay in cache."""
    return max(16, (1 << 21) // max(width, 1))


def object_columns(inst: np.ndarray, *, progress: bool | None = None) -> dict[str, np.ndarray]:
    """:class:`~segkit.evaluation.object_stats.TiledObjects` columns of an instance map (no class
    checks, one numpy array per column), measured in full-width strips."""
    inst = _check_label_map(inst, "the instance map")
    if inst.dtype == bool:
        inst = inst.astype(np.uint8)
    height, width = inst.shape
    acc = TiledObjects(inst.shape)
    if inst.size == 0:
        return acc.columns()
    rows = _strip_rows(width)
    windows = iter_windows(inst, inst.shape, (rows, width))
    return _measure(acc, windows, -(-height // rows), progress, "measuring objects")


def object_table(
    inst: np.ndarray,
    inst_class: Mapping[int, int],
    class_names: Sequence[str],
    pixel_size: float | None = None,
    image: str = "",
    *,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """One row per object of an instance map, with the values of ``skimage.measure.regionprops``.

    Columns (:data:`OBJECT_COLUMNS`): ``image``, ``id``, ``class`` (the name ``class_names[class_id]``),
    ``area`` (pixels), ``perimeter`` (pixels; regionprops' ``perimeter``, the length of the
    4-connected boundary with diagonal steps weighted by √2), ``centroid_y``/``centroid_x`` (row and
    column of the pixel centres' mean, pixel (0, 0) at 0), ``major_axis``/``minor_axis`` (lengths of
    the axes of the ellipse with the same second moments), ``eccentricity`` (0 circle, 1 line) and
    ``solidity`` (area / convex-hull area) and ``touches_border`` (``True`` when a pixel of the object lies
    in the first or last row or column: the image cuts it, so its size is a lower bound). With ``pixel_size`` (micrometres per pixel)
    :data:`UM_COLUMNS` follow: ``area_um2``, ``perimeter_um``, ``major_axis_um``, ``minor_axis_um``.
    Rows come in increasing id order.

    Measured without a loop over objects (:mod:`segkit.evaluation.object_stats`: runs, ``np.bincount``,
    shifted comparisons for the perimeter, a vectorised hull for the convex area), about 100 times
    faster than one regionprops call per object; the values equal regionprops' (``area``, ``solidity``
    and ``touches_border`` exactly; the others to float rounding, see ``tests/evaluation/test_objects_fast.py``).
    A progress bar (tqdm, on stderr) appears when stderr is a terminal and the map holds more than
    :data:`PROGRESS_MIN_OBJECTS` objects; ``progress=True``/``False`` forces it on or off.
    """
    inst = _check_label_map(inst, f"the instance map of '{image}'" if image else "the instance map")
    _check_pixel_size(pixel_size)
    cols = object_columns(inst, progress=progress)
    ids = cols["id"]
    cls = _class_of(ids, inst_class, len(class_names), "the instance map")
    keep = ids > 0  # negative ids need a class, as before, but regionprops gives them no row
    if not keep.all():
        cols = {k: v[keep] for k, v in cols.items()}
        cls = cls[keep]
    return _rows(cols, cls, class_names, pixel_size, image)


def object_table_tiled(
    source: Any,
    shape: tuple[int, int],
    class_names: Sequence[str],
    inst_class: Mapping[int, int] | None = None,
    *,
    object_classes: Sequence[int] | None = None,
    tile: int | tuple[int, int] = 1024,
    pixel_size: float | None = None,
    image: str = "",
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """:func:`object_table` of a map too large to hold, measured tile by tile and merged exactly.

    ``source`` is an array-like (a numpy array, a memory map, a zarr array: anything sliceable) or a
    window reader ``read(y0, y1, x0, x1) -> array``; ``shape`` is the map's ``(height, width)``.
    Each tile is read with a 2-pixel frame (:data:`~segkit.evaluation.object_stats.HALO`).

    * With ``inst_class`` the map is an **instance map** (object ids, ``{id: class}``): the rows equal
      ``object_table(map, inst_class, class_names, ...)``.
    * With ``object_classes`` it is a **class map**: the objects are the 8-connected components of
      those classes, labelled per tile and joined across tile seams by a union-find; ids and rows
      equal ``object_table(*instances(map, object_classes), class_names, ...)`` (watershed splitting
      with an ``edge_class`` is not available tile by tile).
    """
    if (inst_class is None) == (object_classes is None):
        raise SegkitError("object_table_tiled needs exactly one of inst_class (an instance map) or "
                          "object_classes (a class map)")
    _check_pixel_size(pixel_size)
    height, width = (int(s) for s in shape)
    if object_classes is not None:
        classes = [int(c) for c in object_classes]
        if not classes:
            raise SegkitError("object_classes is empty; expected at least one class id that makes objects")
        if 0 in classes:
            raise SegkitError(f"the background class 0 is in object_classes {classes}; expected it not to be")
        for c in classes:
            if not 0 <= c < len(class_names):
                raise SegkitError(f"object class {c} has no name; expected a class id below {len(class_names)}")
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    acc = TiledObjects((height, width), object_classes)
    n_tiles = -(-height // th) * -(-width // tw)
    cols = _measure(acc, iter_windows(source, (height, width), tile), n_tiles, progress, "measuring objects")
    if object_classes is not None:
        cls = np.asarray(classes, dtype=np.int64)[cols["class_index"]]
    else:
        assert inst_class is not None
        cls = _class_of(cols["id"], inst_class, len(class_names), "the instance map")
        keep = cols["id"] > 0
        if not keep.all():
            cols = {k: v[keep] for k, v in cols.items()}
            cls = cls[keep]
    return _rows(cols, cls, class_names, pixel_size, image)


def _object_table_reference(
    inst: np.ndarray,
    inst_class: Mapping[int, int],
    class_names: Sequence[str],
    pixel_size: float | None = None,
    image: str = "",
) -> list[dict[str, Any]]:
    """The former :func:`object_table`: one ``skimage.measure.regionprops`` call per object (about
    1,000 objects per second). Kept as the reference the vectorised table is tested against; its columns and
    row order are those of :func:`object_table`.
    """
    inst = _check_label_map(inst, f"the instance map of '{image}'" if image else "the instance map")
    if pixel_size is not None and not (math.isfinite(pixel_size) and pixel_size > 0):
        raise SegkitError(f"pixel_size is {pixel_size}; expected a positive number of micrometres per pixel")
    ids = _present_ids(inst)
    _check_classes_known(ids, inst_class, "the instance map")
    for i in ids:
        c = inst_class[int(i)]
        if not 0 <= c < len(class_names):
            raise SegkitError(
                f"object {int(i)} has class {c}; expected a class id below {len(class_names)} (the number of class names)"
            )

    rows: list[dict[str, Any]] = []
    height, width = inst.shape
    for p in regionprops(inst.astype(np.int32, copy=False)):
        r0, c0, r1, c1 = p.bbox  # r1, c1 exclusive
        row: dict[str, Any] = {
            "image": image,
            "id": int(p.label),
            "class": class_names[inst_class[int(p.label)]],
            "area": int(p.area),
            "perimeter": float(p.perimeter),
            "centroid_y": float(p.centroid[0]),
            "centroid_x": float(p.centroid[1]),
            "major_axis": float(p.axis_major_length),
            "minor_axis": float(p.axis_minor_length),
            "eccentricity": float(p.eccentricity),
            "solidity": float(p.solidity),
            "touches_border": bool(r0 == 0 or c0 == 0 or r1 == height or c1 == width),
        }
        if pixel_size is not None:
            row["area_um2"] = row["area"] * pixel_size**2
            row["perimeter_um"] = row["perimeter"] * pixel_size
            row["major_axis_um"] = row["major_axis"] * pixel_size
            row["minor_axis_um"] = row["minor_axis"] * pixel_size
        rows.append(row)
    return rows


def write_objects_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write :func:`object_table` rows (possibly of many images) to a CSV file; returns its path.

    The header is every column in order of first appearance (:data:`OBJECT_COLUMNS` when ``rows`` is
    empty); a row without a column (no pixel size for that image) leaves the cell empty.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields or list(OBJECT_COLUMNS), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------------------------------
# matching


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _counts(tp: int, n_pred: int, n_true: int, ious: Sequence[float]) -> dict[str, float | int]:
    return {
        "tp": tp,
        "fp": n_pred - tp,
        "fn": n_true - tp,
        "count_pred": n_pred,
        "count_true": n_true,
        "precision": _ratio(tp, n_pred),
        "recall": _ratio(tp, n_true),
        "f1": _ratio(2 * tp, n_pred + n_true),
        "count_error": _ratio(n_pred - n_true, n_true),
        "mean_matched_iou": float(np.mean(ious)) if len(ious) else math.nan,
    }


def _hungarian(cand: list[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """Most matches, then largest total IoU, among the candidate pairs of one connected group."""
    preds = sorted({p for p, _, _ in cand})
    trues = sorted({t for _, t, _ in cand})
    pi = {p: i for i, p in enumerate(preds)}
    ti = {t: i for i, t in enumerate(trues)}
    bonus = min(len(preds), len(trues)) + 1.0  # one more match outweighs any loss of total IoU
    weight = np.zeros((len(preds), len(trues)))
    for p, t, iou in cand:
        weight[pi[p], ti[t]] = bonus + iou
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return [
        (preds[r], trues[c], float(weight[r, c] - bonus))
        for r, c in zip(rows, cols, strict=True)
        if weight[r, c] > 0
    ]


def _one_to_one(cand: list[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """Choose one-to-one matches among candidate ``(pred, true, iou)`` pairs.

    A pair whose two objects have no other candidate is a match outright (above a 0.5 threshold
    every pair is such a pair). The rest are split into connected groups of the bipartite candidate
    graph, and in each group the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``)
    picks the largest number of matches, and among those the largest total IoU.
    """
    pred_deg: dict[int, int] = {}
    true_deg: dict[int, int] = {}
    for p, t, _ in cand:
        pred_deg[p] = pred_deg.get(p, 0) + 1
        true_deg[t] = true_deg.get(t, 0) + 1
    out = [c for c in cand if pred_deg[c[0]] == 1 and true_deg[c[1]] == 1]
    rest = [c for c in cand if pred_deg[c[0]] > 1 or true_deg[c[1]] > 1]
    if not rest:
        return out
    # connected groups: union-find over pred nodes ("p", id) and true nodes ("t", id)
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(x: tuple[str, int]) -> tuple[str, int]:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p, t, _ in rest:
        a, b = find(("p", p)), find(("t", t))
        if a != b:
            parent[a] = b
    groups: dict[tuple[str, int], list[tuple[int, int, float]]] = {}
    for c in rest:
        groups.setdefault(find(("p", c[0])), []).append(c)
    for group in groups.values():
        out.extend(_hungarian(group))
    return out


def match_objects(
    pred_inst: np.ndarray,
    pred_class: Mapping[int, int],
    true_inst: np.ndarray,
    true_class: Mapping[int, int],
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Match predicted objects to ground-truth objects and count detections per class and overall.

    A **true positive** is a predicted object matched to a ground-truth object of the same class with
    IoU ``|P ∩ T| / |P ∪ T| >= iou_threshold``; matching is one-to-one. Above 0.5 a match is unique
    (two disjoint objects cannot each cover more than half of a third); at or below 0.5 the matching
    maximises the number of matches, then their total IoU. The IoUs come from a contingency table of
    the (predicted id, true id) pairs of all pixels (``np.unique`` over the pairs), so only
    overlapping pairs are ever considered.

    Objects are the non-zero ids present in each instance map (ids in the dictionaries but not in the
    map are ignored). Per class and overall (all classes pooled):
    ``tp``, ``fp = count_pred - tp``, ``fn = count_true - tp``, ``count_pred``, ``count_true``,
    ``precision = tp / count_pred``, ``recall = tp / count_true``,
    ``f1 = 2 tp / (count_pred + count_true)``, ``count_error = (count_pred - count_true) / count_true``
    and ``mean_matched_iou``; a ratio with a zero denominator is NaN.

    Returns:
        ``{"iou_threshold", "per_class": {class_id: counts}, "overall": counts,
        "matches": [(pred_id, true_id, iou), ...]}``.
    """
    pred_inst = _check_label_map(pred_inst, "the predicted instance map")
    true_inst = _check_label_map(true_inst, "the ground-truth instance map")
    if pred_inst.shape != true_inst.shape:
        raise SegkitError(
            f"the predicted instance map has shape {pred_inst.shape} and the ground truth {true_inst.shape}; "
            "expected the same shape"
        )
    if not (0 < iou_threshold <= 1):
        raise SegkitError(f"iou_threshold is {iou_threshold}; expected a number in (0, 1]")

    # Contingency table: relabel ids to 0..n-1, count each (pred, true) pair of overlapping pixels.
    p_ids, p_idx = np.unique(pred_inst.ravel(), return_inverse=True)
    t_ids, t_idx = np.unique(true_inst.ravel(), return_inverse=True)
    p_area = np.bincount(p_idx, minlength=len(p_ids))
    t_area = np.bincount(t_idx, minlength=len(t_ids))
    pair, inter = np.unique(p_idx.astype(np.int64) * len(t_ids) + t_idx, return_counts=True)
    pi, ti = np.divmod(pair, len(t_ids))
    keep = (p_ids[pi] != 0) & (t_ids[ti] != 0)
    pi, ti, inter = pi[keep], ti[keep], inter[keep]
    iou = inter / (p_area[pi] + t_area[ti] - inter)

    preds = [int(i) for i in p_ids if i != 0]
    trues = [int(i) for i in t_ids if i != 0]
    _check_classes_known(preds, pred_class, "the predicted instance map")
    _check_classes_known(trues, true_class, "the ground-truth instance map")

    classes = sorted({pred_class[i] for i in preds} | {true_class[i] for i in trues})
    cand: dict[int, list[tuple[int, int, float]]] = {c: [] for c in classes}
    for a, b, v in zip(p_ids[pi], t_ids[ti], iou, strict=True):
        a, b = int(a), int(b)
        if v >= iou_threshold and pred_class[a] == true_class[b]:
            cand[pred_class[a]].append((a, b, float(v)))

    per_class: dict[int, dict[str, float | int]] = {}
    matches: list[tuple[int, int, float]] = []
    for c in classes:
        m = _one_to_one(cand[c])
        matches.extend(m)
        n_pred = sum(1 for i in preds if pred_class[i] == c)
        n_true = sum(1 for i in trues if true_class[i] == c)
        per_class[c] = _counts(len(m), n_pred, n_true, [v for _, _, v in m])
    overall = _counts(len(matches), len(preds), len(trues), [v for _, _, v in matches])
    return {"iou_threshold": iou_threshold, "per_class": per_class, "overall": overall, "matches": matches}


# --------------------------------------------------------------------------------------------------
# size distributions


def _sizes(values: Iterable[float], name: str) -> np.ndarray:
    a = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(a)):
        raise SegkitError(
            f"{name} has {int(np.sum(~np.isfinite(a)))} non-finite values; expected finite sizes"
        )
    return a


def size_distribution_test(sizes_a: Iterable[float], sizes_b: Iterable[float]) -> dict[str, Any]:
    """Two-sample Kolmogorov-Smirnov test of two size samples (``scipy.stats.ks_2samp``, two-sided).

    Returns ``statistic`` (D, the largest distance between the two empirical CDFs), ``pvalue``,
    ``n_a``, ``n_b``, ``median_a``, ``median_b``, ``mean_a``, ``mean_b`` and ``reason`` (``None``, or
    why the test was not run: a sample is empty, in which case ``statistic`` and ``pvalue`` are NaN).
    """
    a = _sizes(sizes_a, "sizes_a")
    b = _sizes(sizes_b, "sizes_b")
    out: dict[str, Any] = {
        "statistic": math.nan,
        "pvalue": math.nan,
        "n_a": int(a.size),
        "n_b": int(b.size),
        "median_a": float(np.median(a)) if a.size else math.nan,
        "median_b": float(np.median(b)) if b.size else math.nan,
        "mean_a": float(np.mean(a)) if a.size else math.nan,
        "mean_b": float(np.mean(b)) if b.size else math.nan,
        "reason": None,
    }
    empty = [n for n, x in (("sizes_a", a), ("sizes_b", b)) if not x.size]
    if empty:
        out["reason"] = (
            f"{' and '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty; the KS test needs at least one value in each"
        )
        return out
    res = stats.ks_2samp(a, b)
    out["statistic"] = float(res.statistic)
    out["pvalue"] = float(res.pvalue)
    return out


def size_histogram_png(
    groups: Mapping[str, Iterable[float]],
    path: str | Path,
    title: str,
    xlabel: str = "area (px)",
) -> Path:
    """Overlaid step histograms of several size samples on shared bins, written as a PNG (as an SVG
    when ``path`` ends in ``.svg``).

    The legend gives each group's ``n`` and median; with exactly two groups the two-sample KS
    statistic and p-value (:func:`size_distribution_test`) are written under the title. Empty groups
    appear in the legend with ``n = 0``. Drawn with matplotlib's Agg canvas (no display, no pyplot
    state). Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not groups:
        raise SegkitError("no groups were given to the size histogram; expected at least one named sample")
    data = {name: _sizes(v, f"group '{name}'") for name, v in groups.items()}
    pooled = np.concatenate([v for v in data.values()]) if data else np.zeros(0)

    fig = Figure(figsize=(7.0, 4.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if pooled.size:
        bins = np.histogram_bin_edges(pooled, bins="auto")
        if len(bins) > 61:  # 'auto' can ask for hundreds of bins on large samples
            bins = np.linspace(bins[0], bins[-1], 61)
    else:
        bins = np.linspace(0.0, 1.0, 11)
    colours = [f"C{i}" for i in range(10)]
    for k, (name, v) in enumerate(data.items()):
        med = f"{np.median(v):.4g}" if v.size else "–"
        label = f"{name} (n = {v.size}, median = {med})"
        colour = colours[k % len(colours)]
        if v.size:
            ax.hist(v, bins=bins, histtype="step", linewidth=2.0, color=colour, label=label)
            ax.axvline(float(np.median(v)), color=colour, linestyle="--", linewidth=1.0)
        else:
            ax.plot([], [], color=colour, linewidth=2.0, label=label)
    if not pooled.size:
        ax.text(0.5, 0.5, "no objects", transform=ax.transAxes, ha="center", va="center", fontsize=14)
    subtitle = ""
    if len(data) == 2:
        ks = size_distribution_test(*data.values())
        subtitle = (
            f"\ntwo-sample KS: distance D = {ks['statistic']:.3f} (0-1), p-value = {ks['pvalue']:.3g}"
            if ks["reason"] is None
            else "\ntwo-sample KS: not run (a group is empty)"
        )
    ax.set_title(title + subtitle, fontsize=13)
    ax.set_xlabel(xlabel, fontsize=12)
    ax.set_ylabel("objects", fontsize=12)
    ax.tick_params(labelsize=11)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    # headroom above the tallest bar for the legend, so it never hides the histograms
    _, top = ax.get_ylim()
    ax.set_ylim(0, max(top, 1.0) * (1.08 + 0.1 * len(data)))
    ax.legend(fontsize=10, loc="upper right", frameon=True, title="dashed: median", title_fontsize=9)
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg" if path.suffix.lower() == ".svg" else "png")
    return path


def _axis_label(column: str) -> str:
    """``area`` -> ``area (px)``, ``area_um2`` -> ``area (µm²)``, ``major_axis_um`` -> ``major axis (µm)``."""
    if column.endswith("_um2"):
        return f"{column[:-4].replace('_', ' ')} (µm²)"
    if column.endswith("_um"):
        return f"{column[:-3].replace('_', ' ')} (µm)"
    if column in ("area", "perimeter", "major_axis", "minor_axis"):
        return f"{column.replace('_', ' ')} (px)"
    return column.replace("_", " ")


def compare_sizes(
    pred_rows: Sequence[Mapping[str, Any]],
    true_rows: Sequence[Mapping[str, Any]],
    class_name: str,
    value: str = "area",
    histogram: str | Path | None = None,
    labels: tuple[str, str] = ("prediction", "ground truth"),
) -> dict[str, Any]:
    """Compare one class's object sizes between prediction and ground truth, per image and pooled.

    ``pred_rows``/``true_rows`` are :func:`object_table` rows (of any number of images); ``value``
    is the column compared (``area``, ``area_um2``, ``major_axis`` ...). Each image present in either
    table gets a :func:`size_distribution_test` of its objects of ``class_name``; ``pooled`` tests all
    images' objects together (as in comparing cell-size distributions over a whole data set). With
    ``histogram`` the pooled sizes are drawn by :func:`size_histogram_png` at that path.

    Returns ``{"class", "value", "per_image": {image: test}, "pooled": test, "histogram": path | None}``
    (``a`` = prediction, ``b`` = ground truth in each test).
    """

    def by_image(rows: Sequence[Mapping[str, Any]], side: str) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for r in rows:
            out.setdefault(str(r.get("image", "")), [])
            if r.get("class") != class_name:
                continue
            if value not in r:
                raise SegkitError(
                    f"a {side} row of image '{r.get('image', '')}' has no column '{value}'; expected one of "
                    f"{sorted(r)} (the *_um columns need a pixel size)"
                )
            out[str(r.get("image", ""))].append(float(r[value]))
        return out

    pred = by_image(pred_rows, "prediction")
    true = by_image(true_rows, "ground-truth")
    images = sorted(set(pred) | set(true))
    per_image = {im: size_distribution_test(pred.get(im, []), true.get(im, [])) for im in images}
    pooled_pred = [v for im in images for v in pred.get(im, [])]
    pooled_true = [v for im in images for v in true.get(im, [])]
    pooled = size_distribution_test(pooled_pred, pooled_true)
    png = None
    if histogram is not None:
        png = size_histogram_png(
            {labels[0]: pooled_pred, labels[1]: pooled_true},
            histogram,
            title=f"{class_name}: {value} over {len(images)} image{'s' if len(images) != 1 else ''}",
            xlabel=_axis_label(value),
        )
    return {"class": class_name, "value": value, "per_image": per_image, "pooled": pooled, "histogram": png}
