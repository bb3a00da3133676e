"""Checks over decoded samples, each finding one sentence naming the file, what was found, what was
expected and the fix. Used by ``python -m segkit.data check`` (which prints them all) and before every
training run (which stops on them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segkit.data.formats import Sample
from segkit.data.io import LOSSY_SUFFIXES


def _suggest_value_map(values: list[int], num_classes: int, ignore_index: int) -> str:
    real = [v for v in values if v != ignore_index]
    if set(real) <= {0, 255} and num_classes == 2:
        return " It looks like a 0/255 binary mask: set data.value_map='{255: 1}'."
    if len(real) <= num_classes:
        mapping = ", ".join(f"{v}: {i}" for i, v in enumerate(sorted(real)) if v != i)
        return f" If these are your {len(real)} classes in order, set data.value_map='{{{mapping}}}'."
    return ""


def check_sample(sample: Sample, num_classes: int, ignore_index: int, values: list[int] | None = None) -> list[str]:
    """Problems of one decoded sample (empty when it is fine)."""
    problems = []
    image, mask = sample.image, sample.mask
    if image.shape[:2] != mask.shape:
        problems.append(
            f"mask '{sample.mask_source}' is {mask.shape[1]}x{mask.shape[0]} but image '{sample.source}' is "
            f"{image.shape[1]}x{image.shape[0]} (width x height); expected the same size"
        )
    if image.size and int(image.min()) == int(image.max()):
        problems.append(f"image '{sample.source}' is blank (every pixel {int(image.min())}); expected an image with content (remove it or fix the export)")
    if values is None:  # the mask's distinct values (check_samples passes them, computed once)
        values = [int(v) for v in np.unique(mask)]
    bad = [v for v in values if v >= num_classes and v != ignore_index]
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


def check_samples(samples: Sequence[Sample], num_classes: int, ignore_index: int) -> list[str]:
    problems: list[str] = []
    values: set[int] = set()
    for s in samples:
        mask_values = [int(v) for v in np.unique(s.mask)]
        problems += check_sample(s, num_classes, ignore_index, mask_values)
        values.update(mask_values)
    if samples and values == {0, ignore_index} and ignore_index == 255:
        problems.append(
            f"every mask holds only 0 and 255 (e.g. '{samples[0].mask_source}'), and 255 is data.ignore_index, so all "
            "non-zero pixels would be ignored; expected class ids. If 255 marks the foreground, set data.value_map='{255: 1}'"
        )
    return problems


def check_train_classes(class_pixels: Sequence[int], class_names: Sequence[str], num_train: int) -> list[str]:
    """A class with no pixel in the training split cannot be learnt."""
    return [
        f"class '{name}' (id {i}) has no pixels in the {num_train} training images; expected every class of "
        "data.class_names in the train split (check data.value_map, data.class_names or the split)"
        for i, (name, n) in enumerate(zip(class_names, class_pixels, strict=True))
        if n == 0
    ]
