"""Reading image and mask files of any common format into the arrays segkit trains on.

Images become ``[H, W, C]`` uint8 (8-bit data unchanged; 16-bit, 32-bit and float data scaled per
image from its 0.5th..99.5th percentile to 0..255, the usual display scaling of microscopy and MRI);
masks become ``[H, W]`` uint8 class ids, through an optional value map (``{255: 1}`` for 0/255 masks,
``{"255,0,0": 1}`` for RGB palette masks). Every problem is a :class:`SegkitError` naming the file,
what was found and what was expected. Nothing is lost silently: an alpha channel is dropped only when
it is fully opaque, 16-bit colour PNGs are read at 16 bits, and mask values are never wrapped.
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


def _png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk; None when the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def read_array(path: str | Path, palette_as_index: bool = False, mask: bool = False) -> np.ndarray:
    """The pixel array of a PNG / TIFF / JPEG / NPY file, as stored (``[H, W]`` or ``[H, W, C]``).

    Indexed-colour PNGs give their indices with ``palette_as_index`` (masks: the VOC convention,
    index = class id) and their colours otherwise (images). With ``mask``, 2- and 4-bit grey PNGs
    give their stored values, not the values scaled to 0..255 for display."""
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
            header = _png_header(path)
            if header is not None and header[0] == 16 and header[1] in (2, 4, 6):
                # Pillow decodes 16-bit grey+alpha / RGB / RGBA PNGs to 8 bits (it keeps the high byte
                # only: 300 reads 1, 1 reads 0); libpng through imagecodecs reads them exactly
                import imagecodecs

                arr = imagecodecs.png_decode(path.read_bytes())
            else:
                with Image.open(path) as im:
                    im.load()
                    if im.mode in ("P", "PA") and not palette_as_index:
                        im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
                    elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                        im = im.convert("RGB")  # a CMYK 4th channel is black, not alpha: never drop it as one
                    # grey + alpha stays 2 channels: to_image / to_mask drop the alpha only when it is opaque
                    arr = np.asarray(im)
                if mask and header is not None and header[1] == 0 and header[0] in (2, 4):
                    # Pillow scales 2-bit grey by 85 and 4-bit by 17 (class 3 of a 2-bit mask reads 255,
                    # the ignore index); optimisers such as optipng write masks at these depths
                    arr = arr // (255 // (2 ** header[0] - 1))
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


def _opaque(dtype: np.dtype) -> float:
    """The alpha value of a fully opaque pixel: the integer maximum (255 in 8 bits), 1.0 for floats."""
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def _transparent_pixels(alpha: np.ndarray) -> int:
    return int(np.count_nonzero(alpha != _opaque(alpha.dtype)))


def intensity_range(arr: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> tuple[float, float]:
    """``(lo, hi)``: the intensities that map to 0 and 255 (the percentiles; ``hi > lo``)."""
    lo, hi = (float(v) for v in np.percentile(arr.astype(np.float32), percentiles))
    return (lo, lo + 1.0) if hi <= lo else (lo, hi)


def map_to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``arr`` clipped to ``[lo, hi]`` and scaled linearly to 0..255."""
    return np.clip((arr.astype(np.float32) - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def scale_to_uint8(arr: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """uint8 unchanged; anything else clipped to the per-image percentiles and scaled to 0..255."""
    if arr.dtype == np.uint8:
        return arr
    return map_to_uint8(arr, *intensity_range(arr, percentiles))


def to_image(arr: np.ndarray, path: str | Path, in_channels: int) -> np.ndarray:
    """Check and convert a raw image array to ``[H, W, in_channels]`` uint8."""
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise SegkitError(f"image '{path}' holds {bad} NaN/Inf values; expected finite intensities (fill or crop them out)")
    return np.ascontiguousarray(scale_to_uint8(fit_channels(arr, path, in_channels)))


def fit_channels(arr: np.ndarray, path: str | Path, in_channels: int) -> np.ndarray:
    """A raw ``[H, W]`` or ``[H, W, C]`` array as ``[H, W, in_channels]``: grey repeated to RGB, a fully opaque
    alpha dropped; anything else that does not fit is one sentence naming the file."""
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[-1]
    if (channels, in_channels) in ((4, 3), (2, 1), (2, 3)):  # RGB + alpha or grey + alpha
        transparent = _transparent_pixels(arr[..., -1])
        if transparent:
            alpha = arr[..., -1]
            raise SegkitError(
                f"image '{path}' has {channels} channels; expected data.in_channels={in_channels}, or {'RGB' if channels == 4 else 'grey'} "
                f"plus a fully opaque alpha, but its alpha (the last channel) is below opaque at {transparent} pixels "
                f"(values {alpha.min()}..{alpha.max()}) and dropping it would lose them: set data.in_channels={channels} to train on it, "
                "or save the image without alpha"
            )
        arr = arr[..., :-1]  # a fully opaque alpha (all 255 in 8 bits) holds no information: dropped silently
    if arr.shape[-1] == 1 and in_channels == 3:
        arr = np.repeat(arr, 3, axis=-1)  # grey images in an RGB dataset
    elif arr.shape[-1] != in_channels:
        raise SegkitError(
            f"image '{path}' has {channels} channels; expected data.in_channels={in_channels} "
            f"(set data.in_channels={channels} if every image has {channels})"
        )
    return arr


def parse_value_map(value_map: Mapping[Any, Any] | None) -> tuple[dict[int, int], dict[tuple[int, int, int], int]]:
    """``data.value_map`` -> (grey value -> class, RGB colour -> class). Keys: an int (``255``) or a
    colour ``"r,g,b"`` (YAML) / ``r-g-b`` (command line, where Hydra cannot quote commas)."""
    grey: dict[int, int] = {}
    colour: dict[tuple[int, int, int], int] = {}
    for key, cls in (value_map or {}).items():
        if isinstance(key, list | tuple):
            parts = list(key)
        elif re.fullmatch(r"\s*-?\d+(\.0*)?\s*", str(key)):
            parts = [str(key)]  # one grey value, maybe negative: "-" is not the r-g-b separator here (-1 is not 1)
        else:
            parts = [p for p in re.split(r"[,\s-]+", str(key).strip()) if p]
        try:
            nums = [int(float(p)) for p in parts]
            cls = int(cls)
        except (TypeError, ValueError):
            raise SegkitError(f"data.value_map has the entry {key!r}: {cls!r}; expected 'value: class' or 'r-g-b: class' with integers") from None
        if not 0 <= cls <= 255:  # masks hold 8-bit class ids: 256 would wrap to 0
            raise SegkitError(f"data.value_map maps {key!r} to {cls}; expected a class id in 0..255")
        if len(nums) == 1:
            grey[nums[0]] = cls
        elif len(nums) == 3:
            colour[(nums[0], nums[1], nums[2])] = cls
        else:
            raise SegkitError(f"data.value_map key {key!r} has {len(nums)} numbers; expected one grey value or three (r,g,b)")
    return grey, colour


def _suggest_map(values: list[int]) -> str:
    """A value map example for out-of-range values, when there are few enough to be the classes."""
    if len(values) > 12:
        return ""
    mapping = ", ".join(f"{v}: {i}" for i, v in enumerate(values) if v != i)
    return f", e.g. data.value_map='{{{mapping}}}' if {', '.join(map(str, values))} are your classes in order"


def to_mask(arr: np.ndarray, path: str | Path, value_map: Mapping[Any, Any] | None = None) -> np.ndarray:
    """Check and convert a raw mask array to ``[H, W]`` uint8 class ids (before the range check).

    Values a grey value map does not list pass through unchanged (``check_sample`` reports those
    that are not class ids); a colour map must list every colour, also of grey masks (``v-v-v``)."""
    grey, colour = parse_value_map(value_map)
    stored = arr.dtype
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # grey + alpha, RGB + alpha: the class ids are in the colours
        transparent = _transparent_pixels(arr[..., -1])
        if transparent:
            raise SegkitError(
                f"mask '{path}' has an alpha channel that is not fully opaque at {transparent} pixels; expected the class ids "
                "in the colour channels only (the alpha is not read, so whatever it marks would be lost): save the mask without alpha"
            )
        arr = arr[..., :-1]
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise SegkitError(f"mask '{path}' holds non-integer values; expected integer class ids")
        arr = arr.astype(np.int64)
    if arr.ndim == 3:
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
        elif arr.shape[-1] != 3:
            raise SegkitError(f"mask '{path}' has {arr.shape[-1]} channels; expected 1 (class ids), or 3 (R = G = B, or colours mapped by data.value_map)")
        else:
            rgb = arr
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
    if colour and not grey:  # a grey mask under a colour-only map: value v is the colour v-v-v, never passed through unmapped
        return _map_palette(np.stack([arr] * 3, axis=-1), colour, path)
    if grey:
        # np.unique, not a lookup table indexed by value: a negative value would index it from the end
        values, inverse = np.unique(arr, return_inverse=True)
        arr = np.array([grey.get(int(v), int(v)) for v in values], dtype=np.int64)[inverse].reshape(arr.shape)
    else:
        values = np.unique(arr)
    outside = [int(v) for v in values if int(v) not in grey and not 0 <= v <= 255]  # map targets are 0..255
    if outside:
        shown = f"{outside[:8]}{' ...' if len(outside) > 8 else ''}"
        fix = ": add them to data.value_map" if grey else f": map them with data.value_map{_suggest_map([int(v) for v in values])}"
        raise SegkitError(
            f"mask '{path}' ({stored}) holds values {shown} outside 0..255{' that data.value_map does not map' if grey else ''}; "
            f"expected class ids 0..255, which segkit stores in 8 bits and never wraps{fix}"
        )
    return np.ascontiguousarray(arr.astype(np.uint8))


def _map_palette(rgb: np.ndarray, colour: dict[tuple[int, int, int], int], path: str | Path) -> np.ndarray:
    # 21 bits per channel: 16-bit colours (exact 16-bit PNG / TIFF reads) must not collide
    rgb = rgb.astype(np.int64)
    code = (rgb[..., 0] << 42) | (rgb[..., 1] << 21) | rgb[..., 2]
    out = np.full(code.shape, -1, dtype=np.int64)
    for (r, g, b), cls in colour.items():
        out[code == ((r << 42) | (g << 21) | b)] = cls
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
    # a colour map is about colours: a palette PNG then gives its colours, not its indices (an
    # editor's palette order need not be the class order, and the map would be ignored)
    colour = parse_value_map(value_map)[1]
    return to_mask(read_array(path, palette_as_index=not colour, mask=True), path, value_map)
