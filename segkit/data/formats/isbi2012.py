"""``isbi2012``: the ISBI 2012 EM segmentation challenge (serial-section TEM, 512x512 grey slices).

Reads either the PNG pairs ``<root>/train/image/N.png`` + ``<root>/train/label/N.png`` or the
challenge's original multi-page TIFF stacks ``<root>/train-volume.tif`` + ``<root>/train-labels.tif``.
Labels store 255 = cell interior and 0 = membrane; ``positive`` chooses which becomes class 1
(``membrane`` by default, as the literature does). Each slice is its own split group, and
``val_slices`` / ``test_slices`` (slice indices) fix the split so no slice is ever in two splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit.data.formats import ReadContext, Reading, Sample, register
from segkit.data.io import read_array, to_image
from segkit.errors import SegkitError

OPTIONS = ("positive", "val_slices", "test_slices")


def _binarise(label: np.ndarray, positive: str) -> tuple[np.ndarray, int]:
    """Class ids from a 0/255 (or 0/1) label, and the number of pixels that were neither (thresholded
    at mid-grey; JPEG or anti-aliased labels have them)."""
    if label.ndim == 3:
        label = label[..., 0]
    binary_top = 255 if label.max(initial=0) > 1 else 1
    interior = label >= (128 if binary_top == 255 else 1)
    grey = int(np.count_nonzero((label != 0) & (label != binary_top)))
    return (~interior if positive == "membrane" else interior).astype(np.uint8), grey


def _read_stack(path: Path) -> np.ndarray:
    """A multi-page TIFF as ``[slices, H, W]`` (no channel guessing: 3 pages are 3 slices)."""
    import tifffile

    try:
        arr = tifffile.imread(path)
    except Exception as err:  # noqa: BLE001 - any decoder failure is the file's problem
        raise SegkitError(f"cannot read '{path}': {type(err).__name__}: {err}; expected a readable multi-page TIFF") from None
    if arr.ndim == 4 and arr.shape[-1] in (1, 3, 4):
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise SegkitError(f"'{path}' holds an array of shape {arr.shape}; expected slices x height x width")
    return arr


@register("isbi2012")
def read_isbi2012(ctx: ReadContext, options: dict) -> Reading:
    positive = options.pop("positive", "membrane")
    val_slices = [int(i) for i in options.pop("val_slices", None) or []]
    test_slices = [int(i) for i in options.pop("test_slices", None) or []]
    if options:
        raise SegkitError(f"data.format_options has unknown keys {sorted(options)}; expected {', '.join(OPTIONS)} for isbi2012")
    if positive not in ("membrane", "cell"):
        raise SegkitError(f"data.format_options.positive is '{positive}'; expected 'membrane' or 'cell'")
    root = ctx.root
    reading = Reading()
    slices: list[tuple[int, np.ndarray, np.ndarray, str, str]] = []
    png_images, png_labels = root / "train" / "image", root / "train" / "label"
    volume, labels = root / "train-volume.tif", root / "train-labels.tif"
    if png_images.is_dir() and png_labels.is_dir():
        stems = sorted((p.stem for p in png_images.glob("*.png") if p.stem.isdigit()), key=int)
        for stem in stems:
            img_path, lab_path = png_images / f"{stem}.png", png_labels / f"{stem}.png"
            if not lab_path.is_file():
                reading.problems.append(f"slice image '{img_path}' has no label '{lab_path}'; expected one label PNG per slice")
                continue
            try:
                slices.append((int(stem), read_array(img_path), read_array(lab_path), str(img_path), str(lab_path)))
            except SegkitError as err:
                reading.problems.append(str(err))
        orphans = sorted({p.stem for p in png_labels.glob("*.png")} - set(stems))
        if orphans:
            reading.problems.append(f"labels without a slice image in '{png_images}': {orphans}; expected train/image/N.png for each")
    elif volume.is_file() and labels.is_file():
        try:
            vol, lab = _read_stack(volume), _read_stack(labels)
        except SegkitError as err:
            reading.problems.append(str(err))
            return reading
        vol = vol if vol.ndim == 3 else vol[None]
        lab = lab if lab.ndim == 3 else lab[None]
        if vol.shape != lab.shape:
            reading.problems.append(f"'{volume}' has shape {vol.shape} but '{labels}' has {lab.shape}; expected the same slices x height x width")
            return reading
        slices = [(i, vol[i], lab[i], f"{volume}[{i}]", f"{labels}[{i}]") for i in range(vol.shape[0])]
    else:
        raise SegkitError(
            f"no ISBI 2012 data under data.root '{root}'; expected train/image/N.png with train/label/N.png, "
            "or train-volume.tif with train-labels.tif (ISBI 2012 EM segmentation challenge, e.g. via github.com/zhixuhao/unet)"
        )
    if not slices and not reading.problems:
        reading.problems.append(f"no slices found under '{root}'; expected train/image/N.png files")
    for index, image, label, src, lab_src in slices:
        try:
            img = to_image(image, src, ctx.in_channels)
        except SegkitError as err:
            reading.problems.append(str(err))
            continue
        if label.shape[:2] != img.shape[:2]:
            reading.problems.append(f"label '{lab_src}' is {label.shape[1]}x{label.shape[0]} but slice '{src}' is {img.shape[1]}x{img.shape[0]}; expected the same size")
            continue
        mask, grey = _binarise(label, positive)
        if grey:
            reading.notes.append(f"label '{lab_src}' has {grey} pixels neither 0 nor 255; thresholded at 128 (a lossless 0/255 label is expected)")
        reading.samples.append(Sample(str(index), img, mask, group=f"slice{index}", source=src, mask_source=lab_src, dtype=str(image.dtype)))
    known = {s.stem for s in reading.samples}
    if val_slices or test_slices:
        wrong = [i for i in val_slices + test_slices if str(i) not in known]
        both = sorted(set(val_slices) & set(test_slices))
        if wrong:
            reading.problems.append(f"data.format_options lists slices {wrong} that were not read; expected indices of slices under '{root}'")
        if both:
            reading.problems.append(f"slices {both} are in both val_slices and test_slices; expected each slice in one split only")
        held = {str(i) for i in val_slices + test_slices}
        reading.split = {
            "train": sorted((s for s in known if s not in held), key=int),
            "val": [str(i) for i in val_slices if str(i) in known],
            "test": [str(i) for i in test_slices if str(i) in known],
        }
    return reading


def load_unlabelled(root: Path) -> list[Path]:
    """The challenge's unlabelled test slices (``<root>/test/N.png``), for prediction."""
    return sorted((root / "test").glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
