"""Checks over decoded samples, each finding one sentence naming the file, what was found, what was
expected and the fix. Used by ``python -m segkit.data check`` (which prints them all) and before every
training run (which stops on them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segkit.data.formats import Sample
from segkit.data.io import LOSSY_SUFFIXES, parse_value_map
from segkit.data.regions import RegionArray
from segkit.errors import SegkitError


def _suggest_value_map(values: list[int], num_classes: int, ignore_index: int) -> str:
    real = [v for v in values if v != ignore_index]
    if set(real) <= {0, 255} and num_classes == 2:
        return " It looks like a 0/255 binary mask: set data.value_map='{255: 1}'."
    if len(real) <= num_classes:
        mapping = ", ".join(f"{v}: {i}" for i, v in enumerate(sorted(real)) if v != i)
        return f" If these are your {len(real)} classes in order, set data.value_map='{{{mapping}}}'."
    return ""


def check_sample(
    sample: Sample, num_classes: int, ignore_index: int, values: list[int] | None = None, value_map: Mapping[Any, Any] | None = None
) -> list[str]:
    """Problems of one decoded sample (empty when it is fine); ``value_map`` is the one the mask was read with."""
    problems = []
    # a tile of a large image may be uniform (empty glass of a slide scan): blank is only a problem of a whole image
    tile = isinstance(sample.image, RegionArray)
    image, mask = np.asarray(sample.image), sample.mask
    if image.shape[:2] != mask.shape:
        problems.append(
            f"mask '{sample.mask_source}' is {mask.shape[1]}x{mask.shape[0]} but image '{sample.source}' is "
            f"{image.shape[1]}x{image.shape[0]} (width x height); expected the same size"
        )
    if not tile and image.size and int(image.min()) == int(image.max()):
        problems.append(f"image '{sample.source}' is blank (every pixel {int(image.min())}); expected an image with content (remove it or fix the export)")
    if values is None:  # the mask's distinct values (check_samples passes them, computed once)
        values = [int(v) for v in np.unique(mask)]
    bad = [v for v in values if v >= num_classes and v != ignore_index]
    grey = parse_value_map(value_map)[0]
    # a grey value map passes the values it does not list through unchanged: those that are not
    # class ids were stored in the file, and replacing the map (the hint below) would drop its entries
    unmapped = [v for v in bad if v not in grey.values()] if grey else []
    if unmapped:
        entries = ", ".join(f"{k}: {c}" for k, c in grey.items())
        problems.append(
            f"mask '{sample.mask_source}' holds values {unmapped[:12]}{' ...' if len(unmapped) > 12 else ''} that data.value_map ({{{entries}}}) "
            f"does not map and that are not class ids; expected every value mapped by data.value_map or a class id 0..{num_classes - 1} "
            f"(data.num_classes={num_classes}) or data.ignore_index={ignore_index}: add them to the map, e.g. "
            f"data.value_map='{{{entries}, {unmapped[0]}: <class id>}}'"
        )
    bad = [v for v in bad if v not in unmapped]  # e.g. a value map target that is not a class id
    if bad:
        lossy = Path(sample.mask_source).suffix.lower() in LOSSY_SUFFIXES
        if lossy:
            hint = " JPEG compression blurs class ids at object borders: save masks losslessly (PNG or TIFF)."
        else:
            hint = _suggest_value_map(values, num_classes, ignore_index)
        shown = values if len(values) <= 12 else values[:12] + ["..."]
        problems.append(
            f"mask '{sample.mask_source}' holds values {bad[:12]}{' ...' if len(bad) > 12 else ''} (all values: {shown}); expected class ids "
            f"0..{num_classes - 1} (data.num_classes={num_classes}) or data.ignore_index={ignore_index}.{hint}"
        )
    return problems


def check_samples(
    samples: Sequence[Sample], num_classes: int, ignore_index: int, value_map: Mapping[Any, Any] | None = None
) -> list[str]:
    problems: list[str] = []
    values: set[int] = set()
    per_mask: list[tuple[Sample, set[int]]] = []
    for s in samples:
        try:  # a tile of a large image is read here (segkit.data.regions): what it finds is one problem
            mask_values = [int(v) for v in np.unique(np.asarray(s.mask))]
            problems += check_sample(s, num_classes, ignore_index, mask_values, value_map)
        except SegkitError as err:
            problems.append(str(err))
            continue
        values.update(mask_values)
        per_mask.append((s, set(mask_values)))
    if samples and values == {0, ignore_index} and ignore_index == 255:
        problems.append(
            f"every mask holds only 0 and 255 (e.g. '{samples[0].mask_source}'), and 255 is data.ignore_index, so all "
            "non-zero pixels would be ignored; expected class ids. If 255 marks the foreground, set data.value_map='{255: 1}'"
        )
    else:
        problems += _ignore_only_masks(per_mask, num_classes, ignore_index)
    return problems


def _ignore_only_masks(per_mask: Sequence[tuple[Sample, set[int]]], num_classes: int, ignore_index: int) -> list[str]:
    """Masks whose only non-zero value is data.ignore_index while other masks hold class ids: a 0/255
    mask among 0/1 masks, whose foreground would be ignored (the all-0/255 case is reported above).
    Not reported when some mask uses the ignore index next to class ids (VOC-style void borders): a
    mask of background and void is then plausible."""
    if not 0 < ignore_index < 256 or ignore_index < num_classes:
        return []  # masks cannot hold it, or it is a class id

    def classes(vals: set[int]) -> set[int]:  # the valid non-background class ids of a mask
        return {v for v in vals if 0 < v < num_classes}

    with_classes = [(s, v) for s, v in per_mask if classes(v)]
    if not with_classes or any(ignore_index in v for _, v in with_classes):
        return []
    example, example_values = with_classes[0]
    cls = "1" if num_classes == 2 else "<class id>"
    return [
        f"mask '{s.mask_source}' holds only {' and '.join(map(str, sorted(v)))} while the other masks hold class ids "
        f"(e.g. '{example.mask_source}': {sorted(example_values)}), and {ignore_index} is data.ignore_index, so all its non-zero "
        f"pixels would be ignored; expected class ids in it: re-save it with its class ids, or, if {ignore_index} marks the "
        f"foreground in it and every mask like it, set data.value_map='{{{ignore_index}: {cls}}}'"
        for s, v in per_mask
        if v - {0} == {ignore_index}
    ]


def check_train_classes(class_pixels: Sequence[int], class_names: Sequence[str], num_train: int) -> list[str]:
    """A class with no pixel in the training split cannot be learnt."""
    return [
        f"class '{name}' (id {i}) has no pixels in the {num_train} training images; expected every class of "
        "data.class_names in the train split (check data.value_map, data.class_names or the split)"
        for i, (name, n) in enumerate(zip(class_names, class_pixels, strict=True))
        if n == 0
    ]
