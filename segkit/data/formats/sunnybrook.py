"""``sunnybrook``: Sunnybrook Cardiac Data (short-axis cine MRI), left ventricle.

Layout (as distributed with the contour subset): ``<root>/dicoms/<patient_id>/<n>.dcm`` (int16 DICOM),
``<root>/contourfiles/<original_id>/i-contours/IM-0001-<nnnn>-icontour-manual.txt`` (and
``o-contours/``), and ``<root>/link.csv`` mapping ``patient_id`` to ``original_id``. Contour ``<nnnn>`` is
DICOM ``<n>.dcm`` of that patient. Each contour is a polygon of ``x y`` points, rasterised here:
the i-contour (endocardium) encloses the LV blood pool (class 1). With ``myocardium: true`` class 2 is
the o-contour minus the i-contour; slices without an o-contour then get ``ignore_index`` outside the
blood pool (their myocardium is unknown). Only slices with an i-contour are samples. Intensities are
clipped to each slice's ``percentiles`` and scaled to 0..255 (MRI has no fixed intensity scale).
The split unit is the patient (``val_patients`` / ``test_patients`` fix it).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segkit.data.formats import ReadContext, Reading, Sample, register
from segkit.data.io import scale_to_uint8
from segkit.errors import SegkitError

OPTIONS = ("myocardium", "percentiles", "val_patients", "test_patients")
_CONTOUR = re.compile(r"IM-\d+-(\d+)-([io])contour-manual\.txt$")


def read_contour(path: Path) -> np.ndarray:
    """``[K, 2]`` float (x, y) points of a contour file."""
    try:
        pts = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise SegkitError(f"cannot read contour '{path}': {err}; expected lines of 'x y' numbers") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise SegkitError(f"contour '{path}' has shape {pts.shape}; expected at least 3 lines of 'x y'")
    return pts


def rasterise(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Filled polygon as a ``[H, W]`` bool mask (pixel centres at integer coordinates)."""
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in points], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def read_dicom(path: Path) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - any decoder failure is the file's problem
        raise SegkitError(f"cannot read DICOM '{path}': {type(err).__name__}: {err}; expected a readable DICOM image") from None
    slope, intercept = float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0)
    return arr.astype(np.float32) * slope + intercept


@register("sunnybrook")
def read_sunnybrook(ctx: ReadContext, options: dict) -> Reading:
    myocardium = bool(options.pop("myocardium", False))
    percentiles = tuple(float(p) for p in options.pop("percentiles", (1.0, 99.0)))
    val_patients = [str(p) for p in options.pop("val_patients", None) or []]
    test_patients = [str(p) for p in options.pop("test_patients", None) or []]
    if options:
        raise SegkitError(f"data.format_options has unknown keys {sorted(options)}; expected {', '.join(OPTIONS)} for sunnybrook")
    root = ctx.root
    link = root / "link.csv"
    expected = "<root>/link.csv, <root>/dicoms/<patient_id>/<n>.dcm and <root>/contourfiles/<original_id>/i-contours/IM-0001-<nnnn>-icontour-manual.txt"
    if not link.is_file():
        raise SegkitError(f"no link.csv in data.root '{root}'; expected {expected} (Sunnybrook Cardiac Data, e.g. via github.com/kwu93/image-segmentation)")
    reading = Reading()
    with link.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"patient_id", "original_id"} <= set(rows[0]):
        raise SegkitError(f"'{link}' has columns {list(rows[0]) if rows else []}; expected patient_id,original_id")
    for row in rows:
        patient, original = row["patient_id"].strip(), row["original_id"].strip()
        dicom_dir, contour_dir = root / "dicoms" / patient, root / "contourfiles" / original
        if not dicom_dir.is_dir() or not (contour_dir / "i-contours").is_dir():
            missing = dicom_dir if not dicom_dir.is_dir() else contour_dir / "i-contours"
            reading.problems.append(f"'{link}' names patient {patient} / {original} but '{missing}' does not exist; expected {expected}")
            continue
        outer = {int(m.group(1)): p for p in (contour_dir / "o-contours").glob("*.txt") if (m := _CONTOUR.search(p.name))} if (contour_dir / "o-contours").is_dir() else {}
        for contour in sorted((contour_dir / "i-contours").glob("*.txt")):
            m = _CONTOUR.search(contour.name)
            if not m:
                reading.problems.append(f"contour file '{contour}' does not match IM-0001-<nnnn>-icontour-manual.txt; expected that naming")
                continue
            n = int(m.group(1))
            dcm = dicom_dir / f"{n}.dcm"
            if not dcm.is_file():
                reading.problems.append(f"contour '{contour}' refers to '{dcm}', which does not exist; expected the DICOM of slice {n}")
                continue
            try:
                pixels = read_dicom(dcm)
                h, w = pixels.shape[:2]
                lv = rasterise(read_contour(contour), h, w)
                mask = lv.astype(np.uint8)
                if myocardium:
                    if n in outer:
                        epi = rasterise(read_contour(outer[n]), h, w)
                        mask[epi & ~lv] = 2
                    else:
                        mask[~lv] = 255  # myocardium unknown on this slice
            except SegkitError as err:
                reading.problems.append(str(err))
                continue
            if not np.all(np.isfinite(pixels)):
                reading.problems.append(f"DICOM '{dcm}' holds NaN/Inf values; expected finite intensities")
                continue
            image = scale_to_uint8(pixels, percentiles)[..., None]
            if ctx.in_channels == 3:
                image = np.repeat(image, 3, axis=-1)
            reading.samples.append(Sample(f"{patient}_{n:04d}", np.ascontiguousarray(image), mask, group=patient, source=str(dcm), mask_source=str(contour), dtype="int16 DICOM"))
    if val_patients or test_patients:
        known = {s.group for s in reading.samples}
        wrong = [p for p in val_patients + test_patients if p not in known]
        if wrong:
            reading.problems.append(f"data.format_options names patients {wrong} with no labelled slices; expected some of {sorted(known)}")
        held = set(val_patients) | set(test_patients)
        reading.split = {
            "train": sorted(s.stem for s in reading.samples if s.group not in held),
            "val": sorted(s.stem for s in reading.samples if s.group in val_patients),
            "test": sorted(s.stem for s in reading.samples if s.group in test_patients),
        }
    return reading
