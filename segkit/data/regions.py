"""Training data larger than memory: large (OME-)TIFF and OME-Zarr images cut into tiles read from disk.

An image in a dataset folder is *large* when it is an OME-Zarr directory, or a TIFF with more than
:data:`LARGE_TILES` tiles' worth of pixels (``data.tile_size``, 2048 by default: more than 16.8 Mpx). It is
not decoded whole. It becomes one sample per tile of ``data.tile_size`` px (the last row and column of tiles
are smaller), named ``<stem>_y<row>_x<col>`` and grouped under ``<stem>``, so a split never puts two tiles
of one image in different splits. Each tile's image and mask are :class:`RegionArray` views: they read and
convert their region only when indexed (``view[y0:y1, x0:x1]`` reads that part only) or turned into an
array (``np.asarray(view)``), and the file is opened once per process (safe with loader workers).

Consequences, stated where they matter:

- Training crops may span tile borders: the train tiles of one image are joined into a :class:`TileMosaic`
  (:func:`join_tiles`), each tile draws the crops whose top-left pixel it holds, and a crop reads from up to
  four tiles. So every crop position of the image can be drawn, as in a decoded image. With
  ``tile_groups=tile`` (neighbouring tiles may be in val) crops stay inside their tile.
- Validation and test score each tile as one image: pixel metrics pooled over tiles equal those of the
  whole image predicted tile by tile; an object cut by a tile border counts once per tile it touches.
- Intensities over 8 bits use one linear map per image (:func:`segkit.inference.large.intensity_map`: the
  percentiles of a small pyramid level or of tiles spread over the image), the same map prediction uses.

Storage (``data.storage``): ``memory`` decodes every tile once into memory (the cache small datasets have
always used); ``disk`` keeps the large images' tiles on disk and reads each crop from the file; ``auto``
chooses ``memory`` when the decoded dataset (every sample's pixels, 1 byte per channel plus 1 for the mask)
takes at most :data:`MEMORY_SHARE` of the memory available when the data is read, else ``disk``. The
choice and its numbers go into the run's ``data_stats.json`` (``storage``). Ordinary image files are
always decoded on reading (their readers check every pixel); ``disk`` applies to the large images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segkit.data.io import to_mask
from segkit.errors import SegkitError

#: a TIFF with more pixels than this many tiles of ``data.tile_size`` is read by regions
LARGE_TILES = 4
#: ``data.storage=auto`` keeps the decoded dataset in memory when it takes at most this share of the available memory
MEMORY_SHARE = 0.25
STORAGE_MODES = ("auto", "memory", "disk")

# opened sources per process: (pid, path, level) -> RegionSource (a forked loader worker opens its own)
_SOURCES: dict[tuple[int, str, int], Any] = {}


def _source(path: str, level: int) -> Any:
    from segkit.inference.large import open_source

    key = (os.getpid(), path, level)
    src = _SOURCES.get(key)
    if src is None:
        if len(_SOURCES) > 64:  # a bounded handle cache: a dataset of thousands of large files reopens as it goes
            _SOURCES.clear()
        src = _SOURCES[key] = open_source(path, level)
    return src


class _Lazy2D:
    """Array-like access for a uint8 region read on demand (``shape`` and ``read(y0, y1, x0, x1)`` supplied by
    the class): ``np.asarray(view)`` reads it all; ``view[y0:y1, x0:x1]`` (steps of 1) reads only that part;
    any other index reads the region first."""

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        h, w = self.shape[:2]
        arr = self.read(0, h, 0, w)
        return arr if dtype is None else arr.astype(dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, tuple) and len(index) == 2 and all(isinstance(i, slice) and i.step in (None, 1) for i in index):
            h, w = self.shape[:2]
            (y0, y1, _), (x0, x1, _) = index[0].indices(h), index[1].indices(w)
            return self.read(y0, max(y0, y1), x0, max(x0, x1))
        return np.asarray(self)[index]


@dataclass(frozen=True)
class RegionArray(_Lazy2D):
    """A ``[h, w, C]`` uint8 image or ``[h, w]`` uint8 mask region of a large file, read on access.

    ``mapping`` is the image's intensity map (``None`` for 8-bit data); ``value_map`` the mask's. Picklable:
    only the path and region travel, never an open file."""

    path: str
    level: int
    y0: int
    y1: int
    x0: int
    x1: int
    kind: str  # "image" or "mask"
    in_channels: int = 3
    mapping: tuple[float, float, str] | None = None
    value_map: Mapping[Any, Any] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        hw = (self.y1 - self.y0, self.x1 - self.x0)
        return (*hw, self.in_channels) if self.kind == "image" else hw

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size

    def read(self, y0: int = 0, y1: int | None = None, x0: int = 0, x1: int | None = None) -> np.ndarray:
        """Rows ``y0:y1`` and columns ``x0:x1`` of this region (relative to it), converted."""
        h, w = self.shape[:2]
        y1 = h if y1 is None else y1
        x1 = w if x1 is None else x1
        src = _source(self.path, self.level)
        raw = src.read(self.y0 + y0, self.y0 + y1, self.x0 + x0, self.x0 + x1)
        where = f"{self.path}[{self.y0 + y0}:{self.y0 + y1}, {self.x0 + x0}:{self.x0 + x1}]"
        if self.kind == "mask":
            return to_mask(raw[..., 0] if raw.shape[-1] == 1 else raw, where, self.value_map)
        from segkit.inference.large import to_uint8

        if np.issubdtype(raw.dtype, np.floating) and not np.all(np.isfinite(raw)):
            raise SegkitError(f"image '{where}' holds NaN/Inf values; expected finite intensities (fill or crop them out)")
        out = to_uint8(raw, self.mapping, self.in_channels, Path(where))
        return np.ascontiguousarray(out.astype(np.uint8, copy=False))


def is_large(path: Path, tile_size: int) -> bool:
    """An OME-Zarr directory, or a TIFF with more than :data:`LARGE_TILES` tiles' worth of pixels (read from
    its header, not decoded)."""
    from segkit.inference.large import is_zarr

    if is_zarr(path):
        return True
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = dict(zip(series.axes, series.shape, strict=True))
    except (OSError, ValueError, tifffile.TiffFileError):
        return False  # the ordinary reader reports what is wrong with it
    return shape.get("Y", 0) * shape.get("X", 0) > LARGE_TILES * tile_size * tile_size


def tile_grid(height: int, width: int, tile: int) -> list[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` of the non-overlapping tiles covering the image, row by row."""
    return [(y, min(y + tile, height), x, min(x + tile, width)) for y in range(0, height, tile) for x in range(0, width, tile)]


def region_views(image_path: Path, mask_path: Path, in_channels: int, value_map: Mapping[Any, Any] | None,
                 tile_size: int, level: int = 0) -> list[tuple[tuple[int, int, int, int], RegionArray, RegionArray]]:
    """The tiles of a large image and its mask: ``((y0, y1, x0, x1), image view, mask view)`` each.

    Raises :class:`SegkitError` (naming both files) when the mask's size differs from the image's."""
    from segkit.inference.large import intensity_map, open_source, to_uint8

    image = open_source(image_path, level)
    mask = open_source(mask_path, level)
    if mask.shape != image.shape:
        raise SegkitError(
            f"mask '{mask_path}' is {mask.width}x{mask.height} but image '{image_path}' is {image.width}x{image.height} "
            "(width x height); expected the same size"
        )
    if mask.channels not in (1, 3):
        raise SegkitError(f"mask '{mask_path}' has {mask.channels} channels; expected 1 (class ids) or 3 (colours mapped by data.value_map)")
    mapping = intensity_map(image)
    to_uint8(image.read(0, 1, 0, 1), mapping, in_channels, image_path)  # a channel count that does not fit: said now, naming the file
    views = []
    for box in tile_grid(image.height, image.width, tile_size):
        views.append((box, RegionArray(str(image_path), level, *box, "image", in_channels, mapping),
                      RegionArray(str(mask_path), level, *box, "mask", value_map=value_map)))
    return views


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable`` of /proc/meminfo; the physical memory elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - every supported platform has one of the two
        return 0


def decoded_bytes(samples: list[Any]) -> int:
    """Bytes the samples take decoded: image pixels x channels + mask pixels, 1 byte each."""
    return int(sum(np.prod(s.image.shape) + np.prod(s.mask.shape) for s in samples))


def choose_storage(samples: list[Any], mode: str, available: int | None = None) -> dict[str, Any]:
    """The storage of ``samples`` (``memory`` or ``disk``) for ``data.storage=mode``, with the reason and its
    numbers: the record written to the run's ``data_stats.json``."""
    if mode not in STORAGE_MODES:
        raise SegkitError(f"data.storage is '{mode}'; expected one of {', '.join(STORAGE_MODES)}")
    lazy = [s for s in samples if isinstance(s.image, RegionArray)]
    need = decoded_bytes(samples)
    avail = available_memory() if available is None else int(available)
    record: dict[str, Any] = {"decoded_bytes": need, "available_bytes": avail, "region_tiles": len(lazy),
                              "region_images": len({s.image.path for s in lazy})}
    gb = f"{_size(need)} decoded, {_size(avail)} available"
    if not lazy:
        return {**record, "mode": "memory", "chosen_by": "reader",
                "reason": f"no image is read by regions: every sample was decoded on reading ({gb})"}
    if mode == "memory":
        if need > avail:
            raise SegkitError(
                f"data.storage is 'memory' but the decoded dataset needs {_size(need)} and {_size(avail)} of memory "
                "are available; expected data.storage=disk (crops read from the files) or auto"
            )
        return {**record, "mode": "memory", "chosen_by": "data.storage", "reason": f"data.storage=memory ({gb})"}
    if mode == "disk":
        return {**record, "mode": "disk", "chosen_by": "data.storage", "reason": f"data.storage=disk ({gb})"}
    fits = need <= MEMORY_SHARE * avail
    share = f"{100 * need / max(avail, 1):.1f} % of the available memory ({gb}); memory when at most {100 * MEMORY_SHARE:.0f} %"
    return {**record, "mode": "memory" if fits else "disk", "chosen_by": "auto",
            "reason": f"{'decoded into memory' if fits else 'tiles read from disk'}: the decoded dataset takes {share}"}


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def decode(samples: list[Any]) -> None:
    """Replace every region view by its decoded array, in place (``memory`` storage)."""
    for s in samples:
        if isinstance(s.image, RegionArray):
            s.image = np.asarray(s.image)
        if isinstance(s.mask, RegionArray):
            s.mask = np.asarray(s.mask)


class TileMosaic:
    """The tiles of one large image, ``[(box, image, mask)]`` with decoded arrays or :class:`RegionArray` views,
    read as one image: :meth:`read` returns a region that may span tiles, each part read from its tile only."""

    def __init__(self, tiles: list[tuple[tuple[int, int, int, int], Any, Any]]) -> None:
        self.tiles = tiles
        self.y0, self.y1 = min(b[0] for b, _, _ in tiles), max(b[1] for b, _, _ in tiles)
        self.x0, self.x1 = min(b[2] for b, _, _ in tiles), max(b[3] for b, _, _ in tiles)
        self.channels = tiles[0][1].shape[2]

    def covered(self) -> bool:
        """The tiles cover their bounding rectangle (no tile missing, none overlapping)."""
        area = sum((b[1] - b[0]) * (b[3] - b[2]) for b, _, _ in self.tiles)
        return area == (self.y1 - self.y0) * (self.x1 - self.x0)

    def read(self, kind: str, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` of the image (``kind`` "image": ``[h, w, C]``; "mask": ``[h, w]``)."""
        if not (self.y0 <= y0 <= y1 <= self.y1 and self.x0 <= x0 <= x1 <= self.x1):
            raise ValueError(f"region [{y0}:{y1}, {x0}:{x1}] is outside the image [{self.y0}:{self.y1}, {self.x0}:{self.x1}]")
        shape = (y1 - y0, x1 - x0, self.channels) if kind == "image" else (y1 - y0, x1 - x0)
        out = np.empty(shape, np.uint8)
        for (ty0, ty1, tx0, tx1), image, mask in self.tiles:
            a0, a1, b0, b1 = max(y0, ty0), min(y1, ty1), max(x0, tx0), min(x1, tx1)
            if a0 < a1 and b0 < b1:
                src = image if kind == "image" else mask
                out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = src[a0 - ty0 : a1 - ty0, b0 - tx0 : b1 - tx0]
        return out


@dataclass(frozen=True)
class TileView(_Lazy2D):
    """One tile of a :class:`TileMosaic`: indexed or turned into an array it is the tile, and :meth:`read` may
    reach past the tile's border into its neighbours by up to :attr:`reach` (above, below, left, right)."""

    mosaic: TileMosaic
    box: tuple[int, int, int, int]
    kind: str

    @property
    def shape(self) -> tuple[int, ...]:
        hw = (self.box[1] - self.box[0], self.box[3] - self.box[2])
        return (*hw, self.mosaic.channels) if self.kind == "image" else hw

    @property
    def reach(self) -> tuple[int, int, int, int]:
        m, (y0, y1, x0, x1) = self.mosaic, self.box
        return y0 - m.y0, m.y1 - y1, x0 - m.x0, m.x1 - x1

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` relative to the tile's top-left pixel; negative or past its size
        within :attr:`reach`."""
        return self.mosaic.read(self.kind, self.box[0] + y0, self.box[0] + y1, self.box[2] + x0, self.box[2] + x1)


def join_tiles(images: list[Any], masks: list[Any], stems: list[str], groups: Mapping[str, str],
               boxes: Mapping[str, tuple[int, int, int, int]]) -> tuple[list[Any], list[Any], int]:
    """The training samples with the tiles of each large image joined (:class:`TileView` of one
    :class:`TileMosaic` per image), so that crops can span tile borders. A group is joined only when its tiles
    (all in this list) cover their bounding rectangle; with ``tile_groups=tile`` every tile is its own group and
    stays as it is. Returns the images, the masks and the number of images joined."""
    by_group: dict[str, list[int]] = {}
    for i, stem in enumerate(stems):
        if stem in boxes:
            by_group.setdefault(groups.get(stem, stem), []).append(i)
    images, masks, joined = list(images), list(masks), 0
    for idx in by_group.values():
        if len(idx) < 2:
            continue
        tiles = [(tuple(boxes[stems[i]]), images[i], masks[i]) for i in idx]
        mosaic = TileMosaic(tiles)
        if not mosaic.covered():
            continue
        for i, (box, _, _) in zip(idx, tiles, strict=True):
            images[i], masks[i] = TileView(mosaic, box, "image"), TileView(mosaic, box, "mask")
        joined += 1
    return images, masks, joined


def storage_line(dm: Any) -> str:
    """One line for the console: how many large images became how many tiles, and how they are kept."""
    r = dm.storage_record
    return (f"data: {r['region_images']} large image(s) read by regions, {r['region_tiles']} tiles of {dm.tile_size} px; "
            f"storage {r['mode']} (chosen by {r['chosen_by']}): {r['reason']}")
