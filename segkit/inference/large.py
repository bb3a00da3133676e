"""Images larger than memory: (OME-)TIFF and OME-Zarr read region by region, the Gaussian-blended sliding
window streamed over them, and the label map written tile by tile.

Memory. The image is never held whole, nor are its probabilities. The windows run grid row by grid row,
left to right. A window's blended probabilities go into a working buffer two tiles wide; columns that no
later window of the row touches are flushed. The rows that no later grid row touches become labels. The
rows the next grid row also covers are carried in one buffer: classes + 1 channels, one overlap high,
image wide (102 MB for a 50,000 px wide image, 3 classes, tiles of 512 with 25 % overlap). Label rows are
written out as soon as a tile row of the output is complete. So peak memory is a few tiles plus that carry.

The result equals :func:`segkit.inference.sliding_window_probs` on the whole image for an ensemble without
test-time augmentation: same window grid, same weights, same sums. With TTA, each window is flipped and
rotated rather than the whole image; in expectation this is the same average, but not bit for bit.

Intensities. Over 8 bits, one linear map (the 0.5 and 99.5 percentiles, as :func:`segkit.data.io.scale_to_uint8`
uses for a whole image) is taken from the smallest pyramid level when there is one of at most 4 Mpx. Without
one, it comes from a sample of up to 64 tiles of 256 px spread evenly over the image. Every region then uses
the same map.

Outputs. ``<stem>_labels.ome.tif`` is a tiled (256 px), zlib-compressed BigTIFF. Its OME metadata names the
classes, and it carries the pixel size when known. For OME-Zarr inputs the output is ``<stem>_labels.ome.zarr``,
an NGFF 0.4 label image with the class names as properties, as napari and QuPath read it. Optionally,
``<stem>_probs.ome.tif`` holds the probabilities in the same tiled form, as uint8 (p x 255, rounded), with
one sample per class. ``<stem>_preview.png`` is an overlay at most 2048 px a side.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segkit.data.io import PERCENTILES, fit_channels, intensity_range, map_to_uint8
from segkit.errors import SegkitError
from segkit.inference.sliding_window import gaussian_weight, window_starts

#: output tile edge of the written label maps (px)
OUT_TILE = 256
#: longest side of the preview overlay
PREVIEW_SIDE = 2048
#: at most this many sampled tiles (of SAMPLE_TILE px) fix the intensity map when no small pyramid level exists
SAMPLE_TILES, SAMPLE_TILE = 64, 256
#: a pyramid level at most this large (px) is read whole for the intensity map
SMALL_LEVEL_PIXELS = 4_000_000
#: post-processing keys that need a pixel's neighbourhood or the whole map: not applied region by region
SPATIAL_POSTPROCESS = ("median_size", "min_object_size", "fill_holes")


def _zarr():
    try:
        import zarr
    except ImportError:  # pragma: no cover - zarr is a dependency on Python >= 3.11
        raise SegkitError("reading or writing large images needs the zarr package (pip install 'zarr>=3')") from None
    return zarr


def is_zarr(path: Path) -> bool:
    return path.is_dir() and (path.suffix.lower() == ".zarr" or (path / ".zattrs").is_file() or (path / "zarr.json").is_file())


# --------------------------------------------------------------------------------------------------
# sources


@dataclass
class RegionSource:
    """One 2-D image read by regions: ``read(y0, y1, x0, x1) -> [h, w, C]`` in its own dtype."""

    path: Path
    array: Any  # a zarr array (or anything sliceable) in the order given by ``axes``
    axes: str  # e.g. "YXS", "CYX", "YX" (TIFF) or "cyx", "tczyx" (OME-Zarr), upper-cased
    pixel_size: float | None = None  # micrometres per pixel
    levels: list[Any] = field(default_factory=list)  # the pyramid, full resolution first
    level: int = 0

    def __post_init__(self) -> None:
        axes = self.axes.upper()
        if "Y" not in axes or "X" not in axes or len(axes) != len(self.array.shape):
            raise SegkitError(f"image '{self.path}' has axes '{self.axes}' for shape {tuple(self.array.shape)}; expected Y and X axes")
        index: list[Any] = []
        for ax, n in zip(axes, self.array.shape, strict=True):
            if ax in "YX" or ax in "CS":
                index.append(slice(None))
            elif n == 1:
                index.append(0)
            else:
                raise SegkitError(
                    f"image '{self.path}' has {n} planes along its '{ax}' axis (axes {self.axes}, shape {tuple(self.array.shape)}); "
                    "expected a single 2-D plane (split the stack into one file per plane)"
                )
        self._index = index
        kept = [ax for ax, i in zip(axes, index, strict=True) if not isinstance(i, int)]
        self._kept = "".join(kept)
        channel_axes = [a for a in kept if a in "CS"]
        if len(channel_axes) > 1:
            raise SegkitError(f"image '{self.path}' has both C and S axes ({self.axes}); expected one channel axis")
        shape = dict(zip(axes, self.array.shape, strict=True))
        self.height, self.width = int(shape["Y"]), int(shape["X"])
        self.channels = int(shape[channel_axes[0]]) if channel_axes else 1
        self.dtype = np.dtype(self.array.dtype)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def read(self, y0: int, y1: int, x0: int, x1: int, array: Any | None = None, axes: str | None = None) -> np.ndarray:
        arr = self.array if array is None else array
        idx = list(self._index)
        order = self.axes.upper()
        kept = self._kept
        for i, ax in enumerate(order):
            if ax == "Y":
                idx[i] = slice(y0, y1)
            elif ax == "X":
                idx[i] = slice(x0, x1)
        data = np.asarray(arr[tuple(idx)])
        perm = [kept.index("Y"), kept.index("X")] + [kept.index(a) for a in kept if a in "CS"]
        data = data.transpose(perm)
        return data if data.ndim == 3 else data[..., None]


def open_source(path: str | Path, level: int = 0) -> RegionSource:
    """An (OME-)TIFF through tifffile's zarr store, or an OME-Zarr image (``multiscales``) through zarr;
    ``level`` picks the pyramid level (0: full resolution)."""
    path = Path(path)
    if is_zarr(path):
        return _open_ome_zarr(path, level)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise SegkitError(f"image '{path}' is neither a TIFF nor an OME-Zarr directory; expected .tif/.tiff or .zarr for region-by-region prediction")
    import tifffile

    zarr = _zarr()
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            n_levels = len(series.levels)
            pixel_size = tiff_pixel_size(tif)
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise SegkitError(f"cannot read TIFF '{path}': {err}; expected a readable (OME-)TIFF") from None
    if not 0 <= level < n_levels:
        raise SegkitError(f"level={level} but '{path}' has {n_levels} pyramid level(s); expected 0..{n_levels - 1}")
    levels = []
    for lv in range(n_levels):
        store = tifffile.imread(path, aszarr=True, level=lv)
        levels.append(zarr.open(store, mode="r"))
    if pixel_size is not None and level:
        pixel_size *= levels[0].shape[axes.index("X")] / levels[level].shape[axes.index("X")]
    return RegionSource(path, levels[level], axes, pixel_size, levels, level)


def tiff_pixel_size(tif: Any) -> float | None:
    """Micrometres per pixel from OME ``PhysicalSizeX`` or ImageJ resolution tags, when present."""
    import re

    if tif.ome_metadata:
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        if m and (unit is None or unit.group(1) in ("µm", "um", "micron", "\u00b5m")):
            return float(m.group(1))
    page = tif.pages[0]
    res = page.tags.get("XResolution")
    unit = str((tif.imagej_metadata or {}).get("unit", "")).lower()
    if res is not None and unit in ("micron", "um", "µm", "\\u00b5m"):
        num, den = res.value
        return float(den) / float(num) if num else None
    return None


def _open_ome_zarr(path: Path, level: int) -> RegionSource:
    zarr = _zarr()
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
    except Exception as err:  # noqa: BLE001 - zarr raises many types for a bad store
        raise SegkitError(f"cannot open OME-Zarr '{path}': {type(err).__name__}: {err}; expected an OME-Zarr image directory") from None
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not ms:
        raise SegkitError(f"'{path}' has no 'multiscales' metadata; expected an OME-Zarr image (NGFF 0.4 or 0.5)")
    scale = ms[0]
    datasets = scale.get("datasets") or []
    if not 0 <= level < len(datasets):
        raise SegkitError(f"level={level} but '{path}' has {len(datasets)} pyramid level(s); expected 0..{len(datasets) - 1}")
    axes_meta = scale.get("axes") or [{"name": a} for a in "tczyx"]
    names = "".join((a["name"] if isinstance(a, dict) else str(a))[0] for a in axes_meta).upper()
    levels = [group[d["path"]] for d in datasets]
    pixel_size = None
    for t in datasets[level].get("coordinateTransformations") or []:
        if t.get("type") == "scale":
            x_axis = names.index("X")
            unit = axes_meta[x_axis].get("unit") if isinstance(axes_meta[x_axis], dict) else None
            if unit in (None, "micrometer"):
                pixel_size = float(t["scale"][x_axis])
    return RegionSource(path, levels[level], names, pixel_size, levels, level)


# --------------------------------------------------------------------------------------------------
# intensities


def intensity_map(source: RegionSource) -> tuple[float, float, str] | None:
    """``(lo, hi, how)``: the linear map of every region to uint8, or ``None`` for uint8 images."""
    if source.dtype == np.uint8:
        return None
    small = [lv for lv in source.levels[source.level:] if math.prod(_yx(source, lv)) <= SMALL_LEVEL_PIXELS]
    if small:
        lv = small[0]
        h, w = _yx(source, lv)
        sample = source.read(0, h, 0, w, array=lv).astype(np.float32)
        how = f"the {h} x {w} pyramid level"
    else:
        h, w = source.shape
        t = min(SAMPLE_TILE, h, w)
        per_axis = max(1, int(math.sqrt(SAMPLE_TILES)))
        ys = np.linspace(0, h - t, per_axis).astype(int)
        xs = np.linspace(0, w - t, per_axis).astype(int)
        sample = np.stack([source.read(int(y), int(y) + t, int(x), int(x) + t) for y in ys for x in xs]).astype(np.float32)
        how = f"{len(ys) * len(xs)} tiles of {t} px spread over the image"
    if not np.all(np.isfinite(sample)):
        raise SegkitError(f"image '{source.path}' holds NaN/Inf values; expected finite intensities")
    lo, hi = intensity_range(sample)
    return lo, hi, f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]} of {how}: {lo:g}..{hi:g} -> 0..255"


def _yx(source: RegionSource, array: Any) -> tuple[int, int]:
    axes = source.axes.upper()
    return int(array.shape[axes.index("Y")]), int(array.shape[axes.index("X")])


def to_uint8(region: np.ndarray, mapping: tuple[float, float, str] | None, in_channels: int, path: Path) -> np.ndarray:
    """A region ``[h, w, C]`` as the network's uint8 ``[h, w, in_channels]``: channels fitted as for a whole
    image (:func:`segkit.data.io.fit_channels`), then the image's one intensity map."""
    region = fit_channels(region, path, in_channels)
    return region if mapping is None else map_to_uint8(region, mapping[0], mapping[1])


# --------------------------------------------------------------------------------------------------
# the streamed sliding window


@dataclass
class Strip:
    """Rows ``[y0, y0 + labels.shape[0])`` of the result, full width, in order."""

    y0: int
    labels: np.ndarray  # uint8 [h, W]
    probs: np.ndarray | None  # uint8 [h, W, K] (p x 255) when asked for
    preview_rows: list[tuple[int, np.ndarray, np.ndarray]]  # (y, input row [W/s, C] uint8, labels row [W/s])


def check_streamable_postprocess(post: dict | None) -> dict[int, float] | None:
    """The per-class thresholds of ``post`` (the only post-processing applied region by region)."""
    if not post:
        return None
    spatial = [k for k in SPATIAL_POSTPROCESS if post.get(k)]
    if spatial:
        raise SegkitError(
            f"postprocess sets {', '.join(spatial)}, which need whole-image neighbourhoods and are not applied region by region; "
            "expected only thresholds for images predicted by regions (give postprocess='{thresholds: {...}}' or postprocess='{}' for argmax)"
        )
    return {int(k): float(v) for k, v in (post.get("thresholds") or {}).items()} or None


def window_probs_fn(modules: Sequence[Any], tta: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """``uint8 windows [N, C, T, T] -> probabilities [N, K, T, T]`` (CPU float32): the members' mean, each
    over the test-time transforms of the window."""
    from segkit.inference.tta import apply_transform, dihedral_transforms, invert_transform

    transforms = dihedral_transforms(bool(tta.get("flips")), bool(tta.get("rot90")))

    def fn(windows: torch.Tensor) -> torch.Tensor:
        total = None
        for module in modules:
            x = windows.to(module.device)
            for t in transforms:
                p = torch.softmax(module(apply_transform(x, t).contiguous()).float(), dim=1)
                p = invert_transform(p, t).cpu()
                total = p if total is None else total.add_(p)
        assert total is not None
        return total.div_(len(modules) * len(transforms))

    return fn


def stream_predict(source: RegionSource, probs_fn: Callable[[torch.Tensor], torch.Tensor], num_classes: int,
                   in_channels: int, *, mapping: tuple[float, float, str] | None = None, tile: int = 512, overlap: float = 0.25, batch_size: int = 4,
                   blend: str = "gaussian", thresholds: dict[int, float] | None = None, with_probs: bool = False,
                   preview_step: int | None = None, progress: Callable[[int, int], None] | None = None,
                   tally: dict[int, list[float]] | None = None) -> Iterator[Strip]:
    """The label map of ``source`` as :class:`Strip` s, top to bottom (see the module docstring);
    ``mapping`` is :func:`intensity_map`'s for images over 8 bits. ``tally`` (optional, with ``thresholds``)
    collects per thresholded class ``[argmax px, px kept, highest probability on its argmax px]`` over the image."""
    from segkit.inference.postprocess import apply_thresholds, tally_thresholds

    height, width = source.shape
    k = int(num_classes)
    th, tw = min(tile, height), min(tile, width)
    ys, xs = window_starts(height, th, overlap), window_starts(width, tw, overlap)
    weight = (gaussian_weight((th, tw)).numpy() if blend == "gaussian" else np.ones((th, tw), np.float32))
    finals = [(ys[r + 1] if r + 1 < len(ys) else height) - ys[r] for r in range(len(ys))]
    carry_rows = max([th - f for f in finals] + [0])
    carry = np.zeros((k + 1, max(carry_rows, 1), width), np.float32)  # channel k: the weight sum
    work_w = 2 * tw
    total_windows, done = len(ys) * len(xs), 0
    step = preview_step or max(1, math.ceil(max(height, width) / PREVIEW_SIDE))
    for r, y in enumerate(ys):
        f = finals[r]
        hc_in = (ys[r - 1] + th - y) if r else 0
        work = np.zeros((k + 1, th, work_w), np.float32)
        base = 0
        labels = np.zeros((f, width), np.uint8)
        probs_out = np.zeros((f, width, k), np.uint8) if with_probs else None
        preview: list[tuple[int, np.ndarray, np.ndarray]] = []
        prev_rows = [yy for yy in range(y + (-y) % step, y + f, step)]
        for c0 in range(0, len(xs), batch_size):
            cols = xs[c0:c0 + batch_size]
            rx0, rx1 = cols[0], cols[-1] + tw
            region = to_uint8(source.read(y, y + th, rx0, rx1), mapping, in_channels, source.path)
            batch = torch.from_numpy(np.ascontiguousarray(region)).permute(2, 0, 1)
            windows = torch.stack([batch[:, :, x - rx0:x - rx0 + tw] for x in cols])
            with torch.inference_mode():
                p = probs_fn(windows).numpy()
            for i, x in enumerate(cols):
                c = c0 + i
                o = x - base
                work[:k, :, o:o + tw] += p[i] * weight
                work[k, :, o:o + tw] += weight
                flush_to = xs[c + 1] if c + 1 < len(xs) else width
                n = flush_to - base
                block = work[:, :, :n]
                if hc_in:
                    block[:, :hc_in] += carry[:, :hc_in, base:flush_to]
                if th > f:
                    carry[:, :th - f, base:flush_to] = block[:, f:th]
                final = block[:k, :f] / block[k:k + 1, :f]
                labels[:, base:flush_to] = apply_thresholds(final, thresholds) if thresholds else final.argmax(0)
                if tally is not None and thresholds:
                    tally_thresholds(final, labels[:, base:flush_to], thresholds, tally)
                if probs_out is not None:
                    probs_out[:, base:flush_to] = np.rint(np.moveaxis(final, 0, -1) * 255.0).astype(np.uint8)
                px0 = base + (-base) % step
                if prev_rows and px0 < flush_to:
                    for yy in prev_rows:
                        preview.append((yy, region[yy - y, px0 - rx0:flush_to - rx0:step], labels[yy - y, px0:flush_to:step]))
                work[:, :, :work_w - n] = work[:, :, n:]
                work[:, :, work_w - n:] = 0.0
                base = flush_to
            done += len(cols)
            if progress is not None:
                progress(done, total_windows)
        yield Strip(y, labels, probs_out, _join_preview(preview))


def _join_preview(pieces: list[tuple[int, np.ndarray, np.ndarray]]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    rows: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for y, img, lab in pieces:
        rows.setdefault(y, ([], []))
        rows[y][0].append(img)
        rows[y][1].append(lab)
    return [(y, np.concatenate(a), np.concatenate(b)) for y, (a, b) in sorted(rows.items())]


# --------------------------------------------------------------------------------------------------
# writers


class RowBlocks:
    """Full-width row strips of any height regrouped into blocks of exactly ``rows`` rows (the last one, at
    :meth:`close`, shorter): output tile rows for the TIFF writer, chunk rows for zarr."""

    def __init__(self, rows: int) -> None:
        self.rows = int(rows)
        self._buf: list[np.ndarray] = []
        self._have = 0

    def _take(self, whole: bool) -> list[np.ndarray]:
        block = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
        n = (block.shape[0] // self.rows) * self.rows if whole else block.shape[0]
        rest = block[n:]
        self._buf, self._have = ([rest] if rest.shape[0] else []), rest.shape[0]
        return [block[i:min(i + self.rows, n)] for i in range(0, n, self.rows)]

    def add(self, strip: np.ndarray) -> list[np.ndarray]:
        self._buf.append(strip)
        self._have += strip.shape[0]
        return self._take(whole=True) if self._have >= self.rows else []

    def close(self) -> list[np.ndarray]:
        return self._take(whole=False) if self._buf else []


def _tiles(strips: Iterator[np.ndarray], width: int, tile: int) -> Iterator[np.ndarray]:
    """Raster-order ``tile x tile`` tiles (zero-padded at the borders) from full-width row strips."""
    blocks = RowBlocks(tile)

    def bands() -> Iterator[np.ndarray]:
        for s in strips:
            yield from blocks.add(s)
        yield from blocks.close()

    for band in bands():
        for x in range(0, width, tile):
            t = np.zeros((tile, tile) + band.shape[2:], band.dtype)
            piece = band[:, x:x + tile]
            t[:piece.shape[0], :piece.shape[1]] = piece
            yield t


def class_description(class_names: Sequence[str]) -> str:
    return "class ids: " + ", ".join(f"{i}={n}" for i, n in enumerate(class_names))


def write_tiled_tiff(path: Path, strips: Iterator[np.ndarray], shape: tuple[int, ...], dtype: Any,
                     class_names: Sequence[str], pixel_size: float | None, name: str) -> None:
    """A tiled, zlib-compressed OME BigTIFF from full-width row strips, written as they come."""
    import tifffile

    width = shape[1]
    meta: dict[str, Any] = {"axes": "YX" if len(shape) == 2 else "YXS", "Name": name,
                            "Description": class_description(class_names)}
    if pixel_size:
        meta.update(PhysicalSizeX=pixel_size, PhysicalSizeY=pixel_size, PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
    tmp = path.with_name(path.name + ".part")
    tifffile.imwrite(tmp, _tiles(strips, width, OUT_TILE), shape=shape, dtype=dtype, tile=(OUT_TILE, OUT_TILE),
                     compression="zlib", bigtiff=True, ome=True, metadata=meta,
                     photometric="minisblack", planarconfig="contig" if len(shape) == 3 else None)
    tmp.replace(path)


class ZarrRows:
    """Full-width row strips into a chunked zarr array, written a whole chunk row at a time (:class:`RowBlocks`:
    no partial chunk is rewritten). ``channels_first`` arrays are ``[K, H, W]`` and take strips ``[h, W, K]``."""

    def __init__(self, array: Any, chunk_rows: int, channels_first: bool = False) -> None:
        self.array, self.channels_first = array, channels_first
        self._blocks = RowBlocks(chunk_rows)
        self._y = 0

    def _write(self, block: np.ndarray) -> None:
        if self.channels_first:
            self.array[:, self._y:self._y + block.shape[0]] = np.moveaxis(block, -1, 0)
        else:
            self.array[self._y:self._y + block.shape[0]] = block
        self._y += block.shape[0]

    def add(self, rows: np.ndarray) -> None:
        for block in self._blocks.add(rows):
            self._write(block)

    def close(self) -> None:
        for block in self._blocks.close():
            self._write(block)


def ngff_group(path: Path, shape: tuple[int, ...], dtype: str, pixel_size: float | None, chunk: int, axes: str) -> tuple[Any, Any]:
    """A new OME-Zarr (NGFF 0.4, zarr format 2) group at ``path`` with one level ``0`` of ``shape``."""
    import shutil

    zarr = _zarr()
    if path.exists():
        shutil.rmtree(path)
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    chunks = tuple(1 if a == "c" else min(chunk, n) for a, n in zip(axes, shape, strict=True))
    arr = group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    scale = pixel_size or 1.0
    group.attrs["multiscales"] = [{
        # the name viewers show: the final one (the group is written under a temporary ``.part`` name and renamed)
        "version": "0.4", "name": path.name.removesuffix(".part").removesuffix(".ome.zarr"),
        "axes": [{"name": "c", "type": "channel"} if a == "c" else {"name": a, "type": "space", "unit": "micrometer"} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0 if a == "c" else scale for a in axes]}]}],
    }]
    return group, arr


def label_attrs(class_names: Sequence[str]) -> dict[str, Any]:
    """NGFF ``image-label`` metadata: segkit's palette and the class names as properties."""
    from segkit.inference.overlay import PALETTE

    colors = [[int(v) for v in PALETTE[i % len(PALETTE)]] + [255] for i in range(len(class_names))]
    return {"version": "0.4",
            "colors": [{"label-value": i, "rgba": colors[i]} for i in range(len(class_names))],
            "properties": [{"label-value": i, "class": n} for i, n in enumerate(class_names)]}


def open_labels(path: Path) -> Any:
    """A written label map as a sliceable ``[H, W]`` array (zarr), for the object tables."""
    zarr = _zarr()
    if is_zarr(path):
        return zarr.open_group(str(path), mode="r")["0"]
    import tifffile

    return zarr.open(tifffile.imread(path, aszarr=True), mode="r")


def write_sidecar(path: Path, info: dict[str, Any]) -> None:
    path.write_text(json.dumps(info, indent=2) + "\n")


def output_stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def predict_large(path: Path, modules: Sequence[Any], out: Path, *, inference: dict, tta: dict, post: dict | None,
                  save_probabilities: bool = False, pixel_size: float | None = None, level: int = 0,
                  output_format: str = "auto", progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Predict one large image region by region into ``out`` (see the module docstring); returns what
    ``predict.json`` records of it."""
    import shutil

    from PIL import Image

    from segkit.inference.overlay import overlay

    source = open_source(path, level)
    names = list(modules[0].class_names)
    k = len(names)
    if k > 256:
        raise SegkitError(f"the checkpoint predicts {k} classes; region-by-region prediction writes uint8 labels (at most 256)")
    in_channels = int(modules[0].norm_mean.shape[1])
    thresholds = check_streamable_postprocess(post)
    px = pixel_size or source.pixel_size
    fmt = ("zarr" if is_zarr(path) else "tiff") if output_format == "auto" else output_format
    if fmt not in ("tiff", "zarr"):
        raise SegkitError(f"large_output is '{output_format}'; expected auto, tiff or zarr")
    stem = output_stem(path)
    height, width = source.shape
    mapping = intensity_map(source)
    step = max(1, math.ceil(max(height, width) / PREVIEW_SIDE))
    preview: list[tuple[int, np.ndarray, np.ndarray]] = []
    probs_rows = None
    probs_path = out / f"{stem}_probs.ome.zarr"
    if save_probabilities:
        probs_group, probs_arr = ngff_group(probs_path.with_name(probs_path.name + ".part"), (k, height, width), "uint8", px, 1024, "cyx")
        probs_rows = ZarrRows(probs_arr, 1024, channels_first=True)

    tally: dict[int, list[float]] = {}

    def label_strips() -> Iterator[np.ndarray]:
        for strip in stream_predict(source, window_probs_fn(modules, tta), k, in_channels, mapping=mapping,
                                    tile=int(inference.get("tile", 512)), overlap=float(inference.get("overlap", 0.25)),
                                    batch_size=int(inference.get("batch_size", 4)), blend=str(inference.get("blend", "gaussian")),
                                    thresholds=thresholds, with_probs=probs_rows is not None, preview_step=step, progress=progress,
                                    tally=tally):
            if probs_rows is not None and strip.probs is not None:
                probs_rows.add(strip.probs)
            preview.extend(strip.preview_rows)
            yield strip.labels

    segkit_attrs = {"class_names": names, "description": class_description(names), "source": str(path), "level": level}
    if fmt == "tiff":
        labels_path = out / f"{stem}_labels.ome.tif"
        write_tiled_tiff(labels_path, label_strips(), (height, width), np.uint8, names, px, f"{stem} labels")
    else:
        labels_path = out / f"{stem}_labels.ome.zarr"
        tmp = labels_path.with_name(labels_path.name + ".part")
        group, arr = ngff_group(tmp, (height, width), "uint8", px, 1024, "yx")
        rows = ZarrRows(arr, 1024)
        for labels in label_strips():
            rows.add(labels)
        rows.close()
        group.attrs["image-label"] = label_attrs(names)
        group.attrs["segkit"] = segkit_attrs
        if labels_path.exists():
            shutil.rmtree(labels_path)
        tmp.rename(labels_path)
    if probs_rows is not None:
        probs_rows.close()
        probs_group.attrs["omero"] = {"channels": [{"label": n, "window": {"start": 0, "end": 255, "min": 0, "max": 255}} for n in names]}
        probs_group.attrs["segkit"] = {**segkit_attrs, "scale": "probability x 255, rounded"}
        if probs_path.exists():
            shutil.rmtree(probs_path)
        probs_path.with_name(probs_path.name + ".part").rename(probs_path)
    if preview:
        img = np.stack([r[1] for r in preview])
        lab = np.stack([r[2] for r in preview])
        rgb = img[..., :3] if img.shape[-1] >= 3 else np.repeat(img[..., :1], 3, axis=-1)
        preview_path = out / f"{stem}_preview.png"
        tmp_preview = preview_path.with_name(f".{stem}_preview.part.png")
        Image.fromarray(overlay(rgb, lab)).save(tmp_preview)
        tmp_preview.replace(preview_path)
    from segkit.inference.postprocess import emptied_from_tally

    emptied = emptied_from_tally(tally, thresholds) if thresholds else []
    return {"labels": str(labels_path), "probabilities": str(probs_path) if probs_rows is not None else None,
            "emptied_by_thresholds": emptied,
            "preview": str(out / f"{stem}_preview.png"), "preview_step": step, "region_by_region": True, "level": level,
            "axes": source.axes, "intensity": mapping[2] if mapping else "uint8 as it is", "format": fmt, "stem": stem,
            "pixel_size_um": px}
