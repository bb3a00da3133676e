"""Reading image and mask files of any common format into the arrays segkit trains on.

Images become ``[H, W, C]`` uint8 (8-bit data unchanged; 16-bit, 32-bit and float data scaled per
image from its 0.5th..99.5th percentile to 0..255, the usual display scaling of microscopy and MRI);
masks become ``[H, W]`` uint8 class ids, through an optional value map (``{255: 1}`` for 0/255 masks,
``{"255,0,0": 1}`` for RGB palette masks). Every problem is a :class:`SegkitError` naming the file,
what was found and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segkit.errors import SegkitError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
#: percentiles that map >8-bit intensities to 0..255
PERCENTILES = (0.5, 99.5)


def read_array(path: str | Path, palette_as_index: bool = False) -> np.ndarray:
    """The pixel array of a PNG / TIFF / JPEG / NPY file, as stored (``[H, W]`` or ``[H, W, C]``).

    Indexed-colour PNGs give their indices with ``palette_as_index`` (masks: the VOC convention,
    index = class id) and their colours otherwise (images)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
            if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
                arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) TIFF
        else:
            with Image.open(path) as im:
                im.load()
                if im.mode == "P" and not palette_as_index:
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("LA", "PA"):
                    im = im.convert("L")
                arr = np.asarray(im)
    except SegkitError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure is the file's problem
        raise SegkitError(f"cannot read '{path}': {type(err).__name__}: {err}; expected a readable, complete {suffix or 'image'} file") from None
    if arr.ndim not in (2, 3):
        raise SegkitError(f"'{path}' holds an array of shape {tuple(arr.shape)}; expected [H, W] or [H, W, C]")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not arr.flags.writeable:  # PIL hands out read-only views; torch wants owned memory
        arr = arr.copy()
    return arr


def scale_to_uint8(arr: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """uint8 unchanged; anything else clipped to the per-image percentiles and scaled to 0..255."""
    if arr.dtype == np.uint8:
        return arr
    x = arr.astype(np.float32)
    lo, hi = np.percentile(x, percentiles)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((x - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def to_image(arr: np.ndarray, path: str | Path, in_channels: int) -> np.ndarray:
    """Check and convert a raw image array to ``[H, W, in_channels]`` uint8."""
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise SegkitError(f"image '{path}' holds {bad} NaN/Inf values; expected finite intensities (fill or crop them out)")
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[-1]
    if channels == 4 and in_channels == 3:
        arr = arr[..., :3]  # drop alpha
    elif channels == 2 and in_channels == 1:  # grey + alpha
        arr = arr[..., :1]
    elif channels == 1 and in_channels == 3:
        arr = np.repeat(arr, 3, axis=-1)  # grey images in an RGB dataset
    elif channels != in_channels:
        raise SegkitError(
            f"image '{path}' has {channels} channels; expected data.in_channels={in_channels} "
            f"(set data.in_channels={channels} if every image has {channels})"
        )
    return np.ascontiguousarray(scale_to_uint8(arr))


def parse_value_map(value_map: Mapping[Any, Any] | None) -> tuple[dict[int, int], dict[tuple[int, int, int], int]]:
    """``data.value_map`` -> (grey value -> class, RGB colour -> class). Keys: an int (``255``) or a
    colour ``"r,g,b"`` (YAML) / ``r-g-b`` (command line, where Hydra cannot quote commas)."""
    grey: dict[int, int] = {}
    colour: dict[tuple[int, int, int], int] = {}
    for key, cls in (value_map or {}).items():
        parts = key if isinstance(key, list | tuple) else [p for p in re.split(r"[,\s-]+", str(key).strip()) if p]
        try:
            nums = [int(float(p)) for p in parts]
            cls = int(cls)
        except (TypeError, ValueError):
            raise SegkitError(f"data.value_map has the entry {key!r}: {cls!r}; expected 'value: class' or 'r-g-b: class' with integers") from None
        if len(nums) == 1:
            grey[nums[0]] = cls
        elif len(nums) == 3:
            colour[(nums[0], nums[1], nums[2])] = cls
        else:
            raise SegkitError(f"data.value_map key {key!r} has {len(nums)} numbers; expected one grey value or three (r,g,b)")
    return grey, colour


def to_mask(arr: np.ndarray, path: str | Path, value_map: Mapping[Any, Any] | None = None) -> np.ndarray:
    """Check and convert a raw mask array to ``[H, W]`` uint8 class ids (before the range check)."""
    grey, colour = parse_value_map(value_map)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise SegkitError(f"mask '{path}' holds non-integer values; expected integer class ids")
        arr = arr.astype(np.int64)
    if arr.ndim == 3:
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
        else:
            rgb = arr[..., :3]
            if colour:
                return _map_palette(rgb, colour, path)
            differ = int(np.count_nonzero((rgb[..., 0] != rgb[..., 1]) | (rgb[..., 0] != rgb[..., 2])))
            if differ:
                colours = np.unique(rgb.reshape(-1, 3), axis=0)
                shown = ", ".join(f"{r}-{g}-{b}" for r, g, b in colours[:6].tolist())
                raise SegkitError(
                    f"mask '{path}' is RGB with R, G, B differing at {differ} pixels ({len(colours)} colours, e.g. {shown}); "
                    "expected the class id in a single channel or in R = G = B, or map the colours with "
                    "data.value_map='{r-g-b: class_id, ...}'"
                )
            arr = rgb[..., 0]
    if grey:
        lut = np.arange(max(int(arr.max(initial=0)), max(grey)) + 1, dtype=np.int64)
        for value, cls in grey.items():
            if value >= 0:
                lut[value] = cls
        arr = lut[arr.astype(np.int64)]
    top = int(arr.max(initial=0))
    if top > 255 or int(arr.min(initial=0)) < 0:
        raise SegkitError(f"mask '{path}' holds values from {int(arr.min())} to {top}; expected class ids in 0..255 (map them with data.value_map)")
    return np.ascontiguousarray(arr.astype(np.uint8))


def _map_palette(rgb: np.ndarray, colour: dict[tuple[int, int, int], int], path: str | Path) -> np.ndarray:
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2].astype(np.int64)
    out = np.full(code.shape, -1, dtype=np.int64)
    for (r, g, b), cls in colour.items():
        out[code == ((r << 16) | (g << 8) | b)] = cls
    unmapped = out < 0
    if unmapped.any():
        left = np.unique(rgb[unmapped].reshape(-1, 3), axis=0)
        shown = ", ".join(f"{r}-{g}-{b}" for r, g, b in left[:6].tolist())
        raise SegkitError(
            f"mask '{path}' has {int(unmapped.sum())} pixels in colours missing from data.value_map ({shown}); "
            "expected every mask colour to have a class"
        )
    return out.astype(np.uint8)


def read_image(path: str | Path, in_channels: int) -> np.ndarray:
    return to_image(read_array(path), path, in_channels)


def read_mask(path: str | Path, value_map: Mapping[Any, Any] | None = None) -> np.ndarray:
    return to_mask(read_array(path, palette_as_index=True), path, value_map)
