"""Post-processing of predicted probabilities into label maps (numpy / scipy, on the CPU).

:func:`postprocess` chains, each step optional: a per-class median filter of the probabilities,
argmax with per-class probability thresholds, removal of small connected components and filling of
enclosed background holes. Objects are 8-connected; background holes are 4-connected (the matching
dual connectivity, so a diagonal gap in an object's outline does not open its hole).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
from scipy import ndimage

from segkit.errors import SegkitError

EIGHT = np.ones((3, 3), dtype=bool)
FOUR = ndimage.generate_binary_structure(2, 1)

#: Keys :func:`postprocess` accepts.
POSTPROCESS_KEYS = (
    "median_size",
    "thresholds",
    "min_object_size",
    "object_classes",
    "fill_holes",
    "background",
)


def _as_probs(probs: Any, name: str) -> np.ndarray:
    if hasattr(probs, "detach"):  # a torch tensor
        probs = probs.detach().cpu().numpy()
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise SegkitError(f"{name} has shape {probs.shape}, expected probabilities [K, H, W]")
    if not np.issubdtype(probs.dtype, np.floating):
        raise SegkitError(f"{name} has dtype {probs.dtype}, expected floating-point probabilities")
    return probs if probs.dtype in (np.float32, np.float64) else probs.astype(np.float32)


def _as_labels(labels: Any, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise SegkitError(
            f"{name} has shape {labels.shape} and dtype {labels.dtype}, expected integer labels [H, W]"
        )
    return labels


def _check_label(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= int(value) <= 255:
        raise SegkitError(f"{name} is {value!r}, expected a class index in 0..255")
    return int(value)


def _check_classes(classes: Any, name: str) -> list[int] | None:
    if classes is None:
        return None
    if isinstance(classes, str | bytes) or not isinstance(classes, Iterable):
        raise SegkitError(f"{name} is {classes!r}, expected a list of class indices")
    return [_check_label(c, name) for c in classes]


def _check_median_size(size: Any, name: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1 or size % 2 == 0:
        raise SegkitError(f"{name} is {size!r}, expected an odd integer >= 1")
    return int(size)


def _check_min_size(min_size: Any, name: str) -> int:
    if isinstance(min_size, bool) or not isinstance(min_size, int | np.integer) or min_size < 0:
        raise SegkitError(f"{name} is {min_size!r}, expected an integer >= 0 (pixels)")
    return int(min_size)


def _check_thresholds(thresholds: Any, num_classes: int, name: str) -> dict[int, float]:
    if thresholds is None:
        return {}
    if not isinstance(thresholds, Mapping):
        raise SegkitError(f"{name} is {thresholds!r}, expected a mapping of class index to probability")
    checked: dict[int, float] = {}
    for key, value in thresholds.items():
        try:
            cls = int(key)
        except (TypeError, ValueError):
            raise SegkitError(f"{name} has key {key!r}, expected a class index") from None
        if not 0 <= cls < num_classes:
            raise SegkitError(f"{name} has class {cls}, expected a class index in 0..{num_classes - 1}")
        if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
            raise SegkitError(f"{name}[{cls}] is {value!r}, expected a probability in [0, 1]")
        checked[cls] = float(value)
    return checked


def median_filter_probs(probs: np.ndarray, size: int) -> np.ndarray:
    """Each class's probability map ``probs[k]`` (``[K, H, W]``) median-filtered over ``size x size``
    windows (reflected borders), then renormalised to sum 1 per pixel. ``size`` is odd; 1 returns
    ``probs`` unchanged. Pixels where every filtered class is 0 keep their unfiltered probabilities."""
    size = _check_median_size(size, "median_filter_probs size")
    probs = _as_probs(probs, "median_filter_probs probs")
    if size == 1:
        return probs
    filtered = ndimage.median_filter(probs, size=(1, size, size), mode="reflect")
    total = filtered.sum(axis=0, keepdims=True)
    empty = total[0] <= 0
    out = np.divide(filtered, total, out=np.zeros_like(filtered), where=total > 0)
    if empty.any():
        out[:, empty] = probs[:, empty]
    return out


def apply_thresholds(
    probs: np.ndarray, thresholds: Mapping[int, float] | None, background: int = 0
) -> np.ndarray:
    """Labels ``[H, W]`` (uint8): the argmax of ``probs [K, H, W]``, except that a pixel whose argmax
    class ``c`` has a threshold ``t`` in ``thresholds`` and ``probs[c] < t`` gets ``background``
    (e.g. ``{1: 0.8}``: class 1 only where its probability reaches 0.8)."""
    probs = _as_probs(probs, "apply_thresholds probs")
    if probs.shape[0] > 256:
        raise SegkitError(
            f"apply_thresholds probs has {probs.shape[0]} classes, expected at most 256 (uint8 labels)"
        )
    background = _check_label(background, "apply_thresholds background")
    checked = _check_thresholds(thresholds, probs.shape[0], "apply_thresholds thresholds")
    labels = probs.argmax(axis=0).astype(np.uint8)
    for cls, t in checked.items():
        labels[(labels == cls) & (probs[cls] < t)] = background
    return labels


def tally_thresholds(probs: np.ndarray, labels: np.ndarray, thresholds: Mapping[int, float],
                     tally: dict[int, list] | None = None) -> dict[int, list]:
    """Add to ``tally`` (class -> ``[argmax px, px kept in labels, highest probability on its argmax px]``) the
    thresholded classes of ``probs`` and ``labels`` (after the thresholds); a large image adds region by region."""
    tally = {} if tally is None else tally
    argmax = probs.argmax(axis=0)
    for cls in thresholds:
        mine = argmax == cls
        if mine.any():
            t = tally.setdefault(int(cls), [0, 0, 0.0])
            t[0] += int(mine.sum())
            t[1] += int((labels == cls).sum())
            t[2] = max(t[2], float(probs[cls][mine].max()))
    return tally


def emptied_from_tally(tally: dict[int, list], thresholds: Mapping[int, float]) -> list[dict[str, Any]]:
    """The classes of :func:`tally_thresholds`' ``tally`` that the argmax predicted but the thresholds removed
    everywhere: each as ``{"class", "threshold", "argmax_pixels", "max_probability"}``."""
    return [{"class": cls, "threshold": float(thresholds[cls]), "argmax_pixels": n, "max_probability": top}
            for cls, (n, kept, top) in sorted(tally.items()) if n and not kept]


def emptied_by_thresholds(probs: np.ndarray, labels: np.ndarray, thresholds: Mapping[int, float]) -> list[dict[str, Any]]:
    """:func:`emptied_from_tally` of one image's ``probs`` and thresholded ``labels``."""
    return emptied_from_tally(tally_thresholds(probs, labels, thresholds), thresholds)


def emptied_item(note: dict[str, Any], class_names: Sequence[str]) -> str:
    """One emptied class in words (the warning and the eval report share it)."""
    cls = note["class"]
    name = class_names[cls] if cls < len(class_names) else cls
    return (f"'{name}' (threshold {note['threshold']:g}, highest probability "
            f"{note['max_probability']:.3f}, {note['argmax_pixels']} argmax px)")


def emptied_message(where: str, notes: list[dict[str, Any]], class_names: Sequence[str]) -> str:
    """One warning sentence for :func:`emptied_by_thresholds`'s ``notes`` of one image."""
    return (f"WARNING: {where}: postprocess.thresholds removed every pixel of {'; '.join(emptied_item(n, class_names) for n in notes)}; "
            "lower the threshold (python -m segkit.tune_postprocess chooses one on validation) to keep the class")


def _classes_present(labels: np.ndarray, classes: Sequence[int] | None, background: int) -> list[int]:
    present = [int(c) for c in np.unique(labels) if c != background]
    return present if classes is None else [c for c in classes if c in present and c != background]


def remove_small_objects(
    labels: np.ndarray, min_size: int, classes: Sequence[int] | None = None, background: int = 0
) -> np.ndarray:
    """A copy of ``labels [H, W]`` in which connected components (8-connectivity) of each class in
    ``classes`` (``None``: every class but ``background``) with fewer than ``min_size`` pixels are set
    to ``background``."""
    labels = _as_labels(labels, "remove_small_objects labels")
    min_size = _check_min_size(min_size, "remove_small_objects min_size")
    classes = _check_classes(classes, "remove_small_objects classes")
    background = _check_label(background, "remove_small_objects background")
    out = labels.copy()
    if min_size <= 1:
        return out
    for cls in _classes_present(labels, classes, background):
        components, _ = ndimage.label(labels == cls, structure=EIGHT)
        sizes = np.bincount(components.ravel())
        small = sizes < min_size
        small[0] = False
        out[small[components]] = background
    return out


def fill_holes(labels: np.ndarray, classes: Sequence[int] | None = None, background: int = 0) -> np.ndarray:
    """A copy of ``labels [H, W]`` in which each hole, a 4-connected region of ``background`` pixels
    that does not touch the image border and whose 4-neighbours all belong to one class ``c`` in
    ``classes`` (``None``: every class but ``background``), is filled with ``c``. A region open to the
    border, or bordered by two classes (e.g. background between a cell and its nucleus), is kept."""
    labels = _as_labels(labels, "fill_holes labels")
    classes = _check_classes(classes, "fill_holes classes")
    background = _check_label(background, "fill_holes background")
    out = labels.copy()
    regions, n = ndimage.label(labels == background, structure=FOUR)
    if n == 0:
        return out
    border = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
    # (region, neighbour class) for every 4-adjacent pair of a background pixel and a non-background one
    ids, neighbours = [], []
    for a, b in (
        (regions[:-1], labels[1:]),
        (regions[1:], labels[:-1]),
        (regions[:, :-1], labels[:, 1:]),
        (regions[:, 1:], labels[:, :-1]),
    ):
        edge = (a > 0) & (b != background)
        ids.append(a[edge].astype(np.int64))
        neighbours.append(b[edge].astype(np.int64))
    pairs = np.unique(np.stack([np.concatenate(ids), np.concatenate(neighbours)], axis=1), axis=0)
    if pairs.size == 0:
        return out
    region_ids, counts = np.unique(pairs[:, 0], return_counts=True)
    single = region_ids[counts == 1]  # regions bordered by exactly one class
    fill_class = np.full(n + 1, -1, dtype=np.int64)
    one = pairs[np.isin(pairs[:, 0], single)]
    fill_class[one[:, 0]] = one[:, 1]
    fill_class[border] = -1
    fill_class[0] = -1
    if classes is not None:
        fill_class[~np.isin(fill_class, classes)] = -1
    target = fill_class[regions]
    hole = target >= 0
    out[hole] = target[hole].astype(out.dtype)
    return out


def postprocess(probs: np.ndarray, cfg: Mapping[str, Any] | None = None, notes: list[dict[str, Any]] | None = None) -> np.ndarray:
    """Labels ``[H, W]`` (uint8) from ``probs [K, H, W]``, applying in order (each step only when its key
    is set): :func:`median_filter_probs` (``median_size``), :func:`apply_thresholds` (``thresholds``:
    class index -> probability; plain argmax without), :func:`remove_small_objects`
    (``min_object_size``, on ``object_classes``, default every non-background class) and
    :func:`fill_holes` (``fill_holes: true``, on ``object_classes``). ``background`` (default 0) is the
    class that thresholded, removed and hole pixels are measured against. Unknown keys raise
    :class:`SegkitError` naming ``postprocess.<key>``. ``notes`` (a list, optional) receives one entry per class
    whose threshold removed every pixel the argmax gave it (:func:`emptied_by_thresholds`), so a caller can say
    so instead of dropping the class silently."""
    cfg = {} if cfg is None else cfg
    if not isinstance(cfg, Mapping):
        raise SegkitError(
            f"postprocess config is {cfg!r}, expected a mapping of {', '.join(POSTPROCESS_KEYS)}"
        )
    for key in cfg:
        if key not in POSTPROCESS_KEYS:
            raise SegkitError(
                f"postprocess.{key} is not a known key, expected one of {', '.join(POSTPROCESS_KEYS)}"
            )
    probs = _as_probs(probs, "postprocess probs")
    background = _check_label(cfg.get("background", 0) or 0, "postprocess.background")
    median_size = cfg.get("median_size")
    if median_size is not None:
        probs = median_filter_probs(probs, _check_median_size(median_size, "postprocess.median_size"))
    thresholds = _check_thresholds(cfg.get("thresholds"), probs.shape[0], "postprocess.thresholds")
    labels = apply_thresholds(probs, thresholds, background=background)
    if notes is not None and thresholds:
        notes += emptied_by_thresholds(probs, labels, thresholds)
    classes = _check_classes(cfg.get("object_classes"), "postprocess.object_classes")
    min_size = cfg.get("min_object_size")
    if min_size is not None:
        min_size = _check_min_size(min_size, "postprocess.min_object_size")
        labels = remove_small_objects(labels, min_size, classes, background=background)
    do_fill = cfg.get("fill_holes", False)
    if not isinstance(do_fill, bool | None):
        raise SegkitError(f"postprocess.fill_holes is {do_fill!r}, expected true or false")
    if do_fill:
        labels = fill_holes(labels, classes, background=background)
    return labels
