"""Reading image/mask pairs from disk and checking them, with errors that name the file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segkit.errors import SegkitError

IMAGE_SUFFIXES = (".png",)


@dataclass(frozen=True)
class Pair:
    """One sample on disk: ``stem`` is the shared file name without suffix."""

    stem: str
    image: Path
    mask: Path


def _listing(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def find_pairs(root: str | os.PathLike, layout_hint: str = "", source: str = "") -> list[Pair]:
    """Match ``<root>/images/<stem>.png`` with ``<root>/masks/<stem>.png`` by stem.

    Raises :class:`SegkitError` naming where the data was looked for, the layout expected and where
    to get it, when the root or either folder is missing, or when files have no partner.
    """
    root = Path(root)
    expected = layout_hint or "<root>/images/<name>.png and <root>/masks/<name>.png"
    where = f" Get it from {source} and set data.root to its folder." if source else ""
    if not root.is_dir():
        raise SegkitError(
            f"dataset not found: data.root '{root}' (absolute: {root.resolve()}) does not exist; "
            f"expected {expected}.{where}"
        )
    missing = [d for d in ("images", "masks") if not (root / d).is_dir()]
    if missing:
        raise SegkitError(
            f"dataset at data.root '{root}' has no {' or '.join(d + '/' for d in missing)} folder; "
            f"expected {expected}.{where}"
        )
    images, masks = _listing(root / "images"), _listing(root / "masks")
    if not images:
        raise SegkitError(f"no .png images in '{root / 'images'}'; expected {expected}.")
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            parts.append(f"images without a mask in '{root / 'masks'}': {_short(lonely_images)}")
        if lonely_masks:
            parts.append(f"masks without an image in '{root / 'images'}': {_short(lonely_masks)}")
        raise SegkitError(f"unpaired files under data.root '{root}': {'; '.join(parts)}; expected one mask per image, same file name.")
    return [Pair(stem, images[stem], masks[stem]) for stem in sorted(images)]


def _short(names: list[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def read_image(path: Path, in_channels: int) -> np.ndarray:
    """An image as ``[H, W, C]`` uint8 with ``C == in_channels`` (grey is repeated to RGB if asked)."""
    try:
        with Image.open(path) as im:
            if in_channels == 3:
                arr = np.asarray(im.convert("RGB"))
            elif in_channels == 1:
                arr = np.asarray(im.convert("L"))[..., None]
            else:
                raise SegkitError(f"data.in_channels={in_channels} is not supported for PNG images; expected 1 or 3")
    except (OSError, SyntaxError) as err:
        raise SegkitError(f"cannot read image '{path}': {err}; expected a readable PNG file") from None
    return np.array(arr, dtype=np.uint8, copy=True, order="C")  # writable, owned


def read_mask(path: Path) -> np.ndarray:
    """A class-id mask as ``[H, W]`` uint8. RGB masks must have R = G = B (the darkfield layout)."""
    try:
        with Image.open(path) as im:
            if im.mode in ("L", "P", "1"):
                arr = np.asarray(im.convert("L") if im.mode == "1" else im)
                if im.mode == "1":
                    arr = (arr > 0).astype(np.uint8)
            elif im.mode in ("RGB", "RGBA"):
                rgb = np.asarray(im.convert("RGB"))
                differ = int(np.count_nonzero((rgb[..., 0] != rgb[..., 1]) | (rgb[..., 0] != rgb[..., 2])))
                if differ:
                    raise SegkitError(
                        f"mask '{path}' is RGB with R, G, B differing at {differ} pixels; expected the class id "
                        "in a single channel or repeated in R = G = B"
                    )
                arr = rgb[..., 0]
            elif im.mode in ("I", "I;16", "I;16B", "I;16L"):
                arr = np.asarray(im)
                if arr.max(initial=0) > 255:
                    raise SegkitError(
                        f"mask '{path}' holds class ids up to {int(arr.max())}; expected at most 255 (uint8 class ids)"
                    )
                arr = arr.astype(np.uint8)
            else:
                raise SegkitError(f"mask '{path}' has image mode {im.mode}; expected a single-channel or R=G=B PNG")
    except (OSError, SyntaxError) as err:
        raise SegkitError(f"cannot read mask '{path}': {err}; expected a readable PNG file") from None
    return np.array(arr, dtype=np.uint8, copy=True, order="C")


def check_pair(pair: Pair, image: np.ndarray, mask: np.ndarray, num_classes: int, ignore_index: int) -> list[str]:
    """Problems with one decoded pair, one sentence each (empty when it is fine)."""
    problems = []
    if image.shape[:2] != mask.shape:
        problems.append(
            f"mask '{pair.mask}' is {mask.shape[1]}x{mask.shape[0]} but image '{pair.image}' is "
            f"{image.shape[1]}x{image.shape[0]} (width x height); expected the same size"
        )
    values = np.unique(mask)
    bad = [int(v) for v in values if v >= num_classes and v != ignore_index]
    if bad:
        problems.append(
            f"mask '{pair.mask}' holds values {bad} (all values: {[int(v) for v in values]}); expected class ids "
            f"0..{num_classes - 1} for data.num_classes={num_classes}"
            + (f" or data.ignore_index={ignore_index}" if ignore_index is not None and ignore_index >= 0 else "")
        )
    return problems
