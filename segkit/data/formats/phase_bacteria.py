"""``phase_bacteria``: ONE labelled phase-contrast image (uint16 TIFF) with three one-hot masks
(``cells`` / ``edges`` / ``other``, stored 0/255 as ``.npy``), as in the patch-classifier write-up.

Layout: ``<root>/Images/phase_<id>.tif`` and ``<root>/Masks/image_<id>_mask_{cells,edges,other}.npy``.
Class ids: 0 other, 1 cell, 2 edge. Because there is a single labelled image, the split is spatial:
``regions`` gives one rectangle ``[y0, x0, y1, x1]`` per split, and they must be at least ``guard``
pixels apart (a band no network input window may straddle, so no validation pixel's context was
trained on). Each region becomes one sample; the split is fixed by the regions.
"""

from __future__ import annotations

import numpy as np

from segkit.data.formats import ReadContext, Reading, Sample, register
from segkit.data.io import read_array, to_image
from segkit.errors import SegkitError

OPTIONS = ("image_id", "regions", "guard")
MASK_ORDER = ("other", "cells", "edges")  # class ids 0, 1, 2


def _gap(a: list[int], b: list[int]) -> int:
    """Pixels between two rectangles ``[y0, x0, y1, x1]`` (negative when they overlap)."""
    dy = max(a[0] - b[2], b[0] - a[2])
    dx = max(a[1] - b[3], b[1] - a[3])
    return max(dy, dx)


@register("phase_bacteria")
def read_phase_bacteria(ctx: ReadContext, options: dict) -> Reading:
    image_id = str(options.pop("image_id", "027"))
    regions = {k: [int(v) for v in r] for k, r in dict(options.pop("regions", None) or {}).items()}
    guard = int(options.pop("guard", 64))
    if options:
        raise SegkitError(f"data.format_options has unknown keys {sorted(options)}; expected {', '.join(OPTIONS)} for phase_bacteria")
    if "train" not in regions or "val" not in regions:
        raise SegkitError(f"data.format_options.regions has {sorted(regions)}; expected at least train and val rectangles [y0, x0, y1, x1]")
    root = ctx.root
    image_path = root / "Images" / f"phase_{image_id}.tif"
    mask_paths = [root / "Masks" / f"image_{image_id}_mask_{name}.npy" for name in MASK_ORDER]
    reading = Reading()
    missing = [str(p) for p in [image_path, *mask_paths] if not p.is_file()]
    if missing:
        raise SegkitError(
            f"phase_bacteria data incomplete under data.root '{root}': missing {', '.join(missing)}; expected "
            "Images/phase_<id>.tif and Masks/image_<id>_mask_{cells,edges,other}.npy (levinejh/simple-cell-seg-demo)"
        )
    try:
        raw = read_array(image_path)
        image = to_image(raw, image_path, ctx.in_channels)
        onehot = np.stack([read_array(p) > 0 for p in mask_paths])
    except SegkitError as err:
        reading.problems.append(str(err))
        return reading
    h, w = image.shape[:2]
    if onehot.shape[1:] != (h, w):
        reading.problems.append(f"masks {[str(p) for p in mask_paths]} are {onehot.shape[2]}x{onehot.shape[1]} but '{image_path}' is {w}x{h}; expected the same size")
        return reading
    count = onehot.sum(0)
    if np.any(count != 1):
        reading.problems.append(
            f"masks of image {image_id} set {int(np.sum(count == 0))} pixels in no class and {int(np.sum(count > 1))} in several; "
            f"expected exactly one of {', '.join(str(p) for p in mask_paths)} to be 255 at every pixel"
        )
    mask = onehot.argmax(0).astype(np.uint8)
    names = sorted(regions)
    for i, a in enumerate(names):
        y0, x0, y1, x1 = regions[a]
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            reading.problems.append(f"data.format_options.regions.{a} is {regions[a]}; expected [y0, x0, y1, x1] inside the {h}x{w} image")
        for b in names[i + 1 :]:
            if _gap(regions[a], regions[b]) < guard:
                reading.problems.append(
                    f"regions {a} {regions[a]} and {b} {regions[b]} are {_gap(regions[a], regions[b])} px apart; "
                    f"expected at least data.format_options.guard={guard} px between splits"
                )
    if reading.problems:
        return reading
    for split, (y0, x0, y1, x1) in regions.items():
        reading.samples.append(Sample(f"{image_id}_{split}", np.ascontiguousarray(image[y0:y1, x0:x1]), np.ascontiguousarray(mask[y0:y1, x0:x1]),
                                      group=f"region_{split}", source=f"{image_path}[{y0}:{y1}, {x0}:{x1}]", mask_source=str(mask_paths[1].parent),
                                      dtype=str(raw.dtype)))
    reading.split = {split: [f"{image_id}_{split}"] for split in regions}
    return reading
