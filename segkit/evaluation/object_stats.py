"""Vectorised per-object measurements of label maps, tile by tile, merged exactly.

:func:`segkit.evaluation.objects.object_table` and :func:`~segkit.evaluation.objects.object_table_tiled`
are built on :class:`TiledObjects`, which measures every object of a (possibly huge) map without a
Python loop over objects or pixels and gives the same numbers as ``skimage.measure.regionprops``:

* **Runs.** Each tile is cut into horizontal runs of equal labels (one comparison pass). A run
  ``(object, row, first column, last column)`` gives the object's pixel count, coordinate sums,
  squared sums and cross sums in closed form, so areas, centroids and second moments come from
  ``np.bincount`` over runs, not over pixels. Sums are kept as exact ``int64`` integers relative to
  the tile's origin; merging the pieces of an object cut by tile borders shifts them exactly to a
  common origin (``Σ(y - a) = Σ(y - b) + n (b - a)`` and so on) and adds them, so the merged sums are
  the very integers a whole-image pass gives.
* **Perimeter** (regionprops' ``perimeter``, neighbourhood 4): a pixel is a border pixel when one of
  its 4-neighbours has another label (or lies outside the image); each border pixel's code
  ``1 + 2 (border 4-neighbours of its object) + 10 (border diagonal neighbours of its object)`` picks
  a weight 0, 1, √2 or (1 + √2) / 2 (skimage's table). Shifted comparisons over the tile find the
  codes; the three weight classes are counted per object (integers, so merging is exact) and the
  perimeter is ``n1 + √2 n2 + (1 + √2) / 2 n3``. A pixel's code depends on labels up to 2 pixels
  away, hence the :data:`HALO` of 2 pixels around each tile.
* **Solidity** = area / convex area, where regionprops' convex area is the number of pixel centres
  inside or on the convex hull of the pixels' "diamonds" (each pixel centre ± 0.5 along each axis;
  ``skimage.morphology.convex_hull_image``). That hull is ``hull(pixel centres) ⊕ diamond``, and the
  hull of the centres is fixed by each row's leftmost and rightmost pixel (the run ends). The left
  side of the hull is the convex minorant of the rows' leftmost columns, found for all objects at
  once by repeatedly deleting every point on or right of the chord of its two neighbours (each
  such point is no hull vertex, so deleting them all at once is safe) until none is left; the right
  side likewise. The diamond widens a row ``y`` of the hull to ``[min(g(y) - 1/2, g(y ± 1/2)),
  max(h(y) + 1/2, h(y ± 1/2))]`` (``g``/``h`` the left and right chains), and the number of integer
  columns in it is counted with exact integer arithmetic (the chains' vertices are integer points).
* **Connected components across tiles** (a class map instead of an instance map): each tile's
  8-connected components get provisional ids; ids on either side of a tile seam that touch (by an
  edge or a corner) with the same class are merged by a union-find (connected components of the
  "touches" graph, ``scipy.sparse.csgraph``), and the merged objects are numbered as
  :func:`segkit.evaluation.objects.instances` numbers them (class order, then raster order of the
  first pixel).

The accumulator is fed windows: a tile's labels with a :data:`HALO`-pixel frame (zeros where the
frame lies outside the image), as :func:`iter_windows` cuts them from an array or from any
``read(y0, y1, x0, x1)`` window reader (a zarr array, a tiled TIFF, a memory map). The tiles must
cover the image without overlapping; their size and order are free.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from segkit.errors import SegkitError

__all__ = ["HALO", "TiledObjects", "iter_windows", "window_reader"]

#: Pixels of context each tile needs on every side (the perimeter code of a pixel depends on
#: labels up to two pixels away).
HALO = 2

_SQRT2 = math.sqrt(2.0)
# perimeter weight class of each code 1 + 2 n4 + 10 nd (skimage.measure.perimeter's table):
# 1 -> weight 1, 2 -> sqrt(2), 3 -> (1 + sqrt(2)) / 2, 0 -> no weight
_CODE_CLASS = np.zeros(64, dtype=np.uint8)
_CODE_CLASS[[5, 7, 15, 17, 25, 27]] = 1
_CODE_CLASS[[21, 33]] = 2
_CODE_CLASS[[13, 23]] = 3
# the same, indexed by 1 + n4 + 5 nd for border pixels (0: not a border pixel)
_CODE_CLASS25 = np.zeros(26, dtype=np.uint8)
for _n4 in range(5):
    for _nd in range(5):
        _CODE_CLASS25[1 + _n4 + 5 * _nd] = _CODE_CLASS[1 + 2 * _n4 + 10 * _nd]
_EIGHT = np.ones((3, 3), dtype=bool)
_BIG = np.iinfo(np.int64).max // 4
_PRUNE_ROUNDS = 64  # rounds of the vectorised hull pruning before the per-object monotone chain


# --------------------------------------------------------------------------------------------------
# windows


def window_reader(source: Any) -> Callable[[int, int, int, int], np.ndarray]:
    """``read(y0, y1, x0, x1)`` for an array-like (anything sliceable, e.g. a numpy array, a memory
    map or a zarr array), or ``source`` itself when it is already callable."""
    if callable(source) and not hasattr(source, "__getitem__"):
        return source
    return lambda y0, y1, x0, x1: np.asarray(source[y0:y1, x0:x1])


def _window(read: Callable[[int, int, int, int], np.ndarray], shape: tuple[int, int],
            y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    height, width = shape
    ya, yb = max(y0 - HALO, 0), min(y1 + HALO, height)
    xa, xb = max(x0 - HALO, 0), min(x1 + HALO, width)
    data = np.asarray(read(ya, yb, xa, xb))
    if data.shape != (yb - ya, xb - xa):
        raise SegkitError(
            f"the window reader gave an array of shape {data.shape} for rows {ya}:{yb}, columns {xa}:{xb}; "
            f"expected {(yb - ya, xb - xa)}"
        )
    if data.dtype == bool:
        data = data.astype(np.uint8)
    win = np.zeros((y1 - y0 + 2 * HALO, x1 - x0 + 2 * HALO), dtype=data.dtype)
    oy, ox = ya - (y0 - HALO), xa - (x0 - HALO)
    win[oy : oy + data.shape[0], ox : ox + data.shape[1]] = data
    return win


def iter_windows(
    source: Any, shape: tuple[int, int], tile: int | tuple[int, int] = 1024
) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(y0, x0, window)`` for the tiles of a ``shape`` map in raster order: ``window`` is the tile
    ``[y0 : y0 + h, x0 : x0 + w]`` with a :data:`HALO`-pixel frame (zeros outside the image), as
    :meth:`TiledObjects.add` takes it. ``source`` is an array-like or a ``read(y0, y1, x0, x1)``
    window reader; ``tile`` is the tile's height and width (one number for a square)."""
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    if th < 1 or tw < 1:
        raise SegkitError(f"tile is {tile}; expected a positive size")
    read = window_reader(source)
    height, width = shape
    for y0 in range(0, height, th):
        for x0 in range(0, width, tw):
            y1, x1 = min(y0 + th, height), min(x0 + tw, width)
            yield y0, x0, _window(read, shape, y0, y1, x0, x1)


# --------------------------------------------------------------------------------------------------
# per-tile measurements


def _runs(core: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of equal non-zero labels: ``(label, row, first column, last column)``."""
    h, w = core.shape
    flat = core.ravel()
    start = np.empty(flat.size, dtype=bool)
    start[0] = True
    np.not_equal(flat[1:], flat[:-1], out=start[1:])
    start[::w] = True
    bnd = np.flatnonzero(start)
    ends = np.empty_like(bnd)
    ends[:-1] = bnd[1:] - 1
    ends[-1] = flat.size - 1
    lab = flat[bnd]
    keep = lab != 0
    bnd, ends, lab = bnd[keep], ends[keep], lab[keep]
    row = bnd // w
    return lab, row, bnd - row * w, ends - row * w


def _border_codes(win: np.ndarray) -> np.ndarray:
    """Perimeter weight class (0-3, see ``_CODE_CLASS``) of every core pixel of a framed window.

    ``win`` is ``[h + 4, w + 4]``; core pixel ``(i, j)`` is ``win[i + 2, j + 2]``. Each same-label test
    between two neighbours is computed once and used by both.
    """
    c = win[1:-1, 1:-1]  # core plus a 1-pixel ring: c[i, j] = win[i + 1, j + 1]
    e_h = win[1:-1, 1:] == win[1:-1, :-1]  # e_h[i, k]: win[i+1, k+1] == win[i+1, k]
    e_v = win[1:, 1:-1] == win[:-1, 1:-1]  # e_v[k, j]: win[k+1, j+1] == win[k, j+1]
    inner = e_h[:, :-1] & e_h[:, 1:]  # left and right of c equal
    inner &= e_v[:-1, :]  # up
    inner &= e_v[1:, :]  # down
    border = c != 0
    border &= ~inner  # (h + 2, w + 2), indexed like c
    # 4-neighbours of core pixel (i, j) = c[i+1, j+1] that are border pixels of its object
    n4 = border[1:-1, :-2] & e_h[1:-1, 1:-2]
    n4 = n4.view(np.uint8)
    n4 += border[1:-1, 2:] & e_h[1:-1, 2:-1]
    n4 += border[:-2, 1:-1] & e_v[1:-2, 1:-1]
    n4 += border[2:, 1:-1] & e_v[2:-1, 1:-1]
    # diagonal pairs: e_dr[k, l]: win[k+2, l+2] == win[k+1, l+1]; e_dl[k, l]: win[k+2, l+1] == win[k+1, l+2]
    e_dr = win[2:-1, 2:-1] == win[1:-2, 1:-2]
    e_dl = win[2:-1, 1:-2] == win[1:-2, 2:-1]
    nd = border[:-2, :-2] & e_dr[:-1, :-1]
    nd = nd.view(np.uint8)
    nd += border[2:, 2:] & e_dr[1:, 1:]
    nd += border[:-2, 2:] & e_dl[:-1, 1:]
    nd += border[2:, :-2] & e_dl[1:, :-1]
    nd *= 5
    nd += n4
    nd += 1
    nd *= border[1:-1, 1:-1]
    return _CODE_CLASS25[nd]


def _sum_at(idx: np.ndarray, values: np.ndarray, n: int, exact_float: bool) -> np.ndarray:
    """Per-index sums of integer values as int64 (bincount when float64 holds them exactly)."""
    if exact_float:
        return np.bincount(idx, weights=values, minlength=n).astype(np.int64)
    out = np.zeros(n, dtype=np.int64)
    np.add.at(out, idx, values)
    return out


def _local_index(keys_sorted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    lo, hi = int(keys_sorted[0]), int(keys_sorted[-1])
    if hi - lo < 4 * labels.size + 1024:
        lut = np.zeros(hi - lo + 1, dtype=np.intp)
        lut[keys_sorted - lo] = np.arange(keys_sorted.size)
        return lut[labels - lo]
    return np.searchsorted(keys_sorted, labels)


# --------------------------------------------------------------------------------------------------
# convex area


def _prune_minorant(obj: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Survivor mask of the points ``(y, x)`` (grouped by ``obj``, ``y`` increasing in each group)
    that are vertices of each group's convex minorant (lower hull of x as a function of y)."""
    alive = np.ones(obj.size, dtype=bool)
    cur = np.arange(obj.size)
    rounds = 0
    while cur.size >= 3:
        o, yy, xx = obj[cur], y[cur], x[cur]
        same = o[:-2] == o[2:]  # p and n in one group, hence i too
        # i lies on or right of the chord p-n: no vertex of the minorant
        rem = (xx[1:-1] - xx[:-2]) * (yy[2:] - yy[:-2]) >= (xx[2:] - xx[:-2]) * (yy[1:-1] - yy[:-2])
        rem &= same
        if not rem.any():
            break
        gone = cur[1:-1][rem]
        alive[gone] = False
        rounds += 1
        changed = np.zeros(int(o[-1]) + 1, dtype=bool)
        changed[obj[gone]] = True
        cur = cur[alive[cur] & changed[o]]
        if rounds >= _PRUNE_ROUNDS and cur.size:
            # a slowly converging chain: finish these few objects with a monotone chain
            _monotone_finish(obj, y, x, alive, cur)
            break
    return alive


def _monotone_finish(obj: np.ndarray, y: np.ndarray, x: np.ndarray, alive: np.ndarray, cur: np.ndarray) -> None:
    """Andrew's monotone chain (lower side) over the remaining points of each object in ``cur``."""
    bounds = np.flatnonzero(np.diff(obj[cur])) + 1
    for group in np.split(cur, bounds):
        stack: list[int] = []
        for k in group.tolist():
            while len(stack) >= 2:
                p, i = stack[-2], stack[-1]
                if (x[i] - x[p]) * (y[k] - y[p]) >= (x[k] - x[p]) * (y[i] - y[p]):
                    stack.pop()
                else:
                    break
            stack.append(k)
        keep = np.zeros(alive.size, dtype=bool)
        keep[stack] = True
        alive[group] = keep[group]


def _ceil_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return -((-num) // den)


def _left_bounds(last: np.ndarray, y: np.ndarray, x: np.ndarray, present: np.ndarray,
                 obj: np.ndarray) -> np.ndarray:
    """Smallest integer column in each row of ``hull(pixels) ⊕ diamond`` on the left side.

    Rows are grouped by object (``last``: the row is its object's last row);
    ``x`` is the row's leftmost column where ``present``.
    """
    idx = np.flatnonzero(present)
    surv_sub = _prune_minorant(obj[idx], y[idx], x[idx])
    surv = np.zeros(y.size, dtype=bool)
    surv[idx[surv_sub]] = True
    ar = np.arange(y.size)
    prev_s = np.maximum.accumulate(np.where(surv, ar, -1))
    next_s = np.minimum.accumulate(np.where(surv, ar, y.size)[::-1])[::-1]

    def value2(p: np.ndarray, n: np.ndarray, yy2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The chain at doubled row ``yy2`` (= 2y or 2y ± 1) on segment p-n, as ``num / den`` of 2x."""
        dy = y[n] - y[p]  # > 0: p < n always here
        num = 2 * x[p] * dy + (x[n] - x[p]) * (yy2 - 2 * y[p])  # = 2 g(yy2 / 2) * dy
        return num, dy

    # g(y) - 1/2: 2x >= 2g - 1; at a vertex g(y) = x and the bound is x itself
    best = x.copy()
    r = np.flatnonzero(~surv)
    if r.size:
        num, den = value2(prev_s[r], next_s[r], 2 * y[r])
        best[r] = _ceil_div(num - den, 2 * den)
    # g(y + 1/2) between rows r and r + 1 of one object (segment prev_s[r] - next_s[r + 1]); the same
    # value bounds row r (from below) and row r + 1 (from above)
    r = np.flatnonzero(~last)
    if r.size:
        num, den = value2(prev_s[r], next_s[r + 1], 2 * y[r] + 1)
        half = _ceil_div(num, 2 * den)
        best[r] = np.minimum(best[r], half)
        best[r + 1] = np.minimum(best[r + 1], half)
    return best


def _convex_areas(r0: np.ndarray, r1: np.ndarray, run_obj: np.ndarray, run_y: np.ndarray,
                  run_a: np.ndarray, run_b: np.ndarray, batch_rows: int = 1 << 22) -> np.ndarray:
    """regionprops' ``area_convex`` of every object from its runs (object index, row, columns)."""
    n_obj = r0.size
    heights = (r1 - r0).astype(np.int64)
    rowoff = np.zeros(n_obj + 1, dtype=np.int64)
    np.cumsum(heights, out=rowoff[1:])
    total = int(rowoff[-1])
    pos = rowoff[run_obj] + (run_y - r0[run_obj])
    left = np.full(total, _BIG, dtype=np.int64)
    right = np.full(total, -_BIG, dtype=np.int64)
    np.minimum.at(left, pos, run_a)
    np.maximum.at(right, pos, run_b)
    del pos
    out = np.zeros(n_obj, dtype=np.int64)
    k0 = 0
    while k0 < n_obj:  # batches of whole objects, to bound memory
        k1 = int(np.searchsorted(rowoff, rowoff[k0] + batch_rows, side="right")) - 1
        k1 = min(max(k1, k0 + 1), n_obj)
        a, b = int(rowoff[k0]), int(rowoff[k1])
        h = heights[k0:k1]
        obj = np.repeat(np.arange(k1 - k0), h)
        y = r0[k0:k1][obj] + (np.arange(b - a) - (rowoff[k0:k1] - a)[obj])
        last = np.zeros(b - a, dtype=bool)
        last[rowoff[k0 + 1 : k1 + 1] - a - 1] = True
        lx, rx = left[a:b], right[a:b]
        present = lx != _BIG
        xmin = _left_bounds(last, y, lx, present, obj)
        xmax = -_left_bounds(last, y, -rx, present, obj)
        out[k0:k1] = np.bincount(obj, weights=(xmax - xmin + 1), minlength=k1 - k0).astype(np.int64)
        k0 = k1
    return out


# --------------------------------------------------------------------------------------------------
# the accumulator


class TiledObjects:
    """Per-object sums of a label map, fed tile by tile (:meth:`add`), merged exactly (:meth:`columns`).

    With ``object_classes=None`` the map is an **instance map** (non-zero ids are objects; an object
    may span many tiles). With ``object_classes`` it is a **class map** and the objects are the
    8-connected components of each of those classes (as :func:`~segkit.evaluation.objects.instances`
    without an edge class finds them), labelled per tile and merged across tile seams by a union-find.

    Per object it keeps the pixel count, exact integer sums of the coordinates, their squares and
    products, the bounding box, the perimeter's three weight-class counts and the rows' end columns
    (the only points the convex hull needs), so merging the pieces of an object is a summation.
    """

    def __init__(self, shape: tuple[int, int], object_classes: Sequence[int] | None = None) -> None:
        height, width = (int(s) for s in shape)
        if height < 1 or width < 1:
            raise SegkitError(f"the map's shape is {shape}; expected a positive height and width")
        self.shape = (height, width)
        self.object_classes = None if object_classes is None else [int(c) for c in object_classes]
        if self.object_classes is not None and len(set(self.object_classes)) != len(self.object_classes):
            raise SegkitError(f"object_classes {self.object_classes} repeats a class; expected each class id once")
        self._entries: list[dict[str, np.ndarray]] = []
        self._runs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._n_entries = 0
        self._covered = 0
        self._tiles: list[tuple[int, int, int, int]] = []
        # class maps: provisional component ids, their class index, and each tile's edge lines
        self._n_prov = 0
        self._prov_class: list[np.ndarray] = []
        self._edges: list[tuple[int, int, int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.objects_seen = 0  # pieces measured so far (an object cut by seams counts once per tile)

    # ---------------------------------------------------------------------------------------------
    def _class_index(self, win: np.ndarray) -> np.ndarray:
        """Class map -> 1 + the index in object_classes (0: not an object class)."""
        classes = self.object_classes
        assert classes is not None
        out = np.zeros(win.shape, dtype=np.uint8 if len(classes) < 255 else np.int32)
        if win.dtype.kind in "ub" and win.dtype.itemsize == 1:
            lut = np.zeros(256, dtype=out.dtype)
            for k, c in enumerate(classes):
                if 0 <= c < 256:
                    lut[c] = k + 1
            return lut[win]
        for k, c in enumerate(classes):
            out[win == c] = k + 1
        return out

    def add(self, y0: int, x0: int, window: np.ndarray) -> None:
        """Measure one tile: ``window`` is the tile's labels at ``(y0, x0)`` with a :data:`HALO`-pixel
        frame on every side (zeros where the frame lies outside the image), as from :func:`iter_windows`."""
        win = np.asarray(window)
        if win.ndim != 2 or win.shape[0] <= 2 * HALO or win.shape[1] <= 2 * HALO:
            raise SegkitError(
                f"the window at ({y0}, {x0}) has shape {win.shape}; expected a 2-D tile with a {HALO}-pixel frame"
            )
        if not (np.issubdtype(win.dtype, np.integer) or win.dtype == bool):
            raise SegkitError(f"the window at ({y0}, {x0}) has dtype {win.dtype}; expected integer labels")
        if win.dtype == bool:
            win = win.astype(np.uint8)
        h, w = win.shape[0] - 2 * HALO, win.shape[1] - 2 * HALO
        height, width = self.shape
        if y0 < 0 or x0 < 0 or y0 + h > height or x0 + w > width:
            raise SegkitError(
                f"the tile at ({y0}, {x0}) of size {h} x {w} leaves the {height} x {width} map"
            )
        self._covered += h * w
        self._tiles.append((y0, x0, y0 + h, x0 + w))

        if self.object_classes is None:
            measured = win  # instance ids: compared and accumulated alike
            core = win[HALO:-HALO, HALO:-HALO]
            lab, ry, ra, rb = _runs(core)
            if not lab.size:
                return
            keys, loc = np.unique(lab.astype(np.int64), return_inverse=True)
            m = keys.size
        else:
            measured = self._class_index(win)
            core_cls = measured[HALO:-HALO, HALO:-HALO]
            core = np.zeros(core_cls.shape, dtype=np.int32)
            m = 0
            for k in range(len(self.object_classes)):
                comp, n = ndimage.label(core_cls == k + 1, structure=_EIGHT)
                if n:
                    on = comp > 0
                    core[on] = comp[on] + m
                    m += n
            if not m:
                return
            lab, ry, ra, rb = _runs(core)
            loc = lab.astype(np.intp) - 1
            keys = self._n_prov + 1 + np.arange(m, dtype=np.int64)
            # class index of each component: the class of its first run
            cls = np.zeros(m, dtype=np.int32)
            cls[loc] = core_cls[ry, ra]
            self._prov_class.append(cls)
            prov = np.where(core > 0, core.astype(np.int64) + self._n_prov, 0)
            self._edges.append((y0, x0, y0 + h, x0 + w, prov[0].copy(), prov[-1].copy(),
                                prov[:, 0].copy(), prov[:, -1].copy()))
            self._n_prov += m

        ry = ry.astype(np.int64)
        ra = ra.astype(np.int64)
        rb = rb.astype(np.int64)
        length = rb - ra + 1
        sx = (ra + rb) * length // 2
        sxx = (rb * (rb + 1) * (2 * rb + 1) - (ra - 1) * ra * (2 * ra - 1)) // 6
        exact = h * w * max(h, w) ** 2 < 2**52
        n = _sum_at(loc, length, m, True)
        e = {
            "key": keys,
            "oy": np.full(m, y0, dtype=np.int64),
            "ox": np.full(m, x0, dtype=np.int64),
            "n": n,
            "sy": _sum_at(loc, ry * length, m, exact),
            "sx": _sum_at(loc, sx, m, exact),
            "syy": _sum_at(loc, ry * ry * length, m, exact),
            "sxx": _sum_at(loc, sxx, m, exact),
            "sxy": _sum_at(loc, ry * sx, m, exact),
        }
        r0 = np.full(m, _BIG, dtype=np.int64)
        np.minimum.at(r0, loc, ry)
        r1 = np.full(m, -1, dtype=np.int64)
        np.maximum.at(r1, loc, ry)
        c0 = np.full(m, _BIG, dtype=np.int64)
        np.minimum.at(c0, loc, ra)
        c1 = np.full(m, -1, dtype=np.int64)
        np.maximum.at(c1, loc, rb)
        e["r0"], e["r1"], e["c0"], e["c1"] = r0 + y0, r1 + 1 + y0, c0 + x0, c1 + 1 + x0
        # first pixel in raster order of the whole map (class maps: numbering of merged objects)
        first = np.full(m, _BIG, dtype=np.int64)
        np.minimum.at(first, loc, (ry + y0) * width + ra + x0)
        e["first"] = first
        # perimeter: weight-class counts of the border pixels
        wcls = _border_codes(measured)
        bidx = np.flatnonzero(wcls)
        if bidx.size:
            blab = core.ravel()[bidx]
            bloc = _local_index(keys, blab.astype(np.int64)) if self.object_classes is None else blab.astype(np.intp) - 1
            counts = np.bincount(bloc * 3 + (wcls.ravel()[bidx].astype(np.intp) - 1), minlength=3 * m)
            counts = counts.reshape(m, 3).astype(np.int64)
        else:
            counts = np.zeros((m, 3), dtype=np.int64)
        e["p1"], e["p2"], e["p3"] = counts[:, 0].copy(), counts[:, 1].copy(), counts[:, 2].copy()
        self._entries.append(e)
        self._runs.append(((loc + self._n_entries).astype(np.int64), ry + y0, ra + x0, rb + x0))
        self._n_entries += m
        self.objects_seen += m

    # ---------------------------------------------------------------------------------------------
    def _merge_components(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class maps: final object id of each provisional id in ``keys`` and the class index per id."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n_prov = self._n_prov
        pclass = np.zeros(n_prov + 1, dtype=np.int32)
        if self._prov_class:
            pclass[1:] = np.concatenate(self._prov_class)
        height, width = self.shape
        pairs_a: list[np.ndarray] = []
        pairs_b: list[np.ndarray] = []

        def touch(u: np.ndarray, v: np.ndarray) -> None:
            """Union the provisional ids of two facing lines (u before the seam, v after it)."""
            for d in (-1, 0, 1):
                a = u[max(0, -d) : u.size - max(0, d)]
                b = v[max(0, d) : v.size - max(0, -d)]
                ok = (a > 0) & (b > 0)
                ok &= pclass[a] == pclass[b]
                if ok.any():
                    pairs_a.append(a[ok])
                    pairs_b.append(b[ok])

        # tiles by the seam each of their edges lies on: below / right of it (top row, left column at
        # the seam) and above / left of it (bottom row, right column)
        below: dict[int, list[int]] = {}
        right: dict[int, list[int]] = {}
        above: dict[int, list[int]] = {}
        left: dict[int, list[int]] = {}
        for t, (y0, x0, y1, x1, *_lines) in enumerate(self._edges):
            below.setdefault(y0, []).append(t)
            right.setdefault(x0, []).append(t)
            above.setdefault(y1, []).append(t)
            left.setdefault(x1, []).append(t)
        for yy in sorted(set(below) & set(above)):
            u = np.zeros(width, dtype=np.int64)
            v = np.zeros(width, dtype=np.int64)
            for t in above[yy]:
                _, x0, _, x1, _, bottom, _, _ = self._edges[t]
                u[x0:x1] = bottom
            for t in below[yy]:
                _, x0, _, x1, top, _, _, _ = self._edges[t]
                v[x0:x1] = top
            touch(u, v)
        for xx in sorted(set(right) & set(left)):
            u = np.zeros(height, dtype=np.int64)
            v = np.zeros(height, dtype=np.int64)
            for t in left[xx]:
                y0, _, y1, _, _, _, _, rcol = self._edges[t]
                u[y0:y1] = rcol
            for t in right[xx]:
                y0, _, y1, _, _, _, lcol, _ = self._edges[t]
                v[y0:y1] = lcol
            touch(u, v)
        a = np.concatenate(pairs_a) if pairs_a else np.zeros(0, dtype=np.int64)
        b = np.concatenate(pairs_b) if pairs_b else np.zeros(0, dtype=np.int64)
        graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n_prov + 1, n_prov + 1)).tocsr()
        _, root = connected_components(graph, directed=False)  # union-find over the seam contacts
        return root, pclass

    def columns(self) -> dict[str, np.ndarray]:
        """Every object's measurements, one array per column, in increasing id order.

        Keys: ``id``, ``class_index`` (class maps only: the index in ``object_classes``), ``area``,
        ``perimeter``, ``centroid_y``, ``centroid_x``, ``major_axis``, ``minor_axis``,
        ``eccentricity``, ``solidity``, ``touches_border``, ``bbox`` (``[n, 4]``: r0, c0, r1, c1).
        """
        height, width = self.shape
        if self._covered != height * width:
            raise SegkitError(
                f"the tiles cover {self._covered} pixels of a {height} x {width} map ({height * width}); "
                "expected tiles that cover the map without overlapping"
            )
        names = ("key", "oy", "ox", "n", "sy", "sx", "syy", "sxx", "sxy", "r0", "r1", "c0", "c1", "first",
                 "p1", "p2", "p3")
        if self._entries:
            e = {k: np.concatenate([c[k] for c in self._entries]) for k in names}
        else:
            e = {k: np.zeros(0, dtype=np.int64) for k in names}

        class_index = None
        if self.object_classes is not None:
            root, pclass = self._merge_components(e["key"])
            comp = root[e["key"]]
            comps, inv = np.unique(comp, return_inverse=True)
            first = np.full(comps.size, _BIG, dtype=np.int64)
            np.minimum.at(first, inv, e["first"])
            ccls = np.zeros(comps.size, dtype=np.int32)
            ccls[inv] = pclass[e["key"]]
            order = np.lexsort((first, ccls))  # class order, then raster order of the first pixel
            rank = np.empty(comps.size, dtype=np.int64)
            rank[order] = np.arange(comps.size)
            ids = np.arange(1, comps.size + 1, dtype=np.int64)
            inv = rank[inv]
            class_index = ccls[order] - 1
        else:
            ids, inv = np.unique(e["key"], return_inverse=True)
        n_obj = ids.size

        def reduce(ufunc: np.ufunc, values: np.ndarray, init: int) -> np.ndarray:
            out = np.full(n_obj, init, dtype=np.int64)
            ufunc.at(out, inv, values)
            return out

        r0 = reduce(np.minimum, e["r0"], _BIG)
        c0 = reduce(np.minimum, e["c0"], _BIG)
        r1 = reduce(np.maximum, e["r1"], -1)
        c1 = reduce(np.maximum, e["c1"], -1)
        # exact shift of each piece's sums from its tile origin to the object's bounding-box corner
        n = e["n"]
        dy = e["oy"] - r0[inv]
        dx = e["ox"] - c0[inv]
        sy = e["sy"] + n * dy
        sx = e["sx"] + n * dx
        syy = e["syy"] + 2 * dy * e["sy"] + n * dy * dy
        sxx = e["sxx"] + 2 * dx * e["sx"] + n * dx * dx
        sxy = e["sxy"] + dy * e["sx"] + dx * e["sy"] + n * dy * dx
        area = reduce(np.add, n, 0)
        sy, sx, syy, sxx, sxy = (reduce(np.add, v, 0).astype(np.float64) for v in (sy, sx, syy, sxx, sxy))
        p1, p2, p3 = (reduce(np.add, e[k], 0) for k in ("p1", "p2", "p3"))

        af = area.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cy = sy / af
            cx = sx / af
            mu_yy = (syy - sy * cy) / af
            mu_xx = (sxx - sx * cx) / af
            mu_xy = (sxy - sx * cy) / af
            half = (mu_yy + mu_xx) / 2
            rad = np.hypot((mu_yy - mu_xx) / 2, mu_xy)
            l1 = np.clip(half + rad, 0, None)
            l2 = np.clip(half - rad, 0, None)
            ecc = np.where(l1 == 0, 0.0, np.sqrt(np.clip(1 - l2 / np.where(l1 == 0, 1, l1), 0, None)))

        if self._runs:
            run_e = np.concatenate([r[0] for r in self._runs])
            run_y = np.concatenate([r[1] for r in self._runs])
            run_a = np.concatenate([r[2] for r in self._runs])
            run_b = np.concatenate([r[3] for r in self._runs])
            convex = _convex_areas(r0, r1, inv[run_e], run_y, run_a, run_b)
        else:
            convex = np.zeros(0, dtype=np.int64)

        out: dict[str, np.ndarray] = {
            "id": ids,
            "area": area,
            "perimeter": p1 + _SQRT2 * p2 + ((1 + _SQRT2) / 2) * p3,
            "centroid_y": r0 + cy,
            "centroid_x": c0 + cx,
            "major_axis": 4 * np.sqrt(l1),
            "minor_axis": 4 * np.sqrt(l2),
            "eccentricity": ecc,
            "solidity": area / convex if n_obj else np.zeros(0),
            "touches_border": (r0 == 0) | (c0 == 0) | (r1 == height) | (c1 == width),
            "bbox": np.stack([r0, c0, r1, c1], axis=1) if n_obj else np.zeros((0, 4), dtype=np.int64),
        }
        if class_index is not None:
            out["class_index"] = class_index
        return out


# --------------------------------------------------------------------------------------------------
# progress


class _Progress:
    """A tqdm bar over tiles, shown only when stderr is a terminal and the map is expected to hold more
    than ``min_objects`` objects (estimated from the tiles measured so far), or when forced."""

    def __init__(self, total: int, enabled: bool | None, min_objects: int, desc: str) -> None:
        self.total, self.enabled, self.min_objects, self.desc = total, enabled, min_objects, desc
        self.bar: Any = None
        self.done = 0

    def update(self, objects_seen: int) -> None:
        self.done += 1
        if self.enabled is False or self.total <= 1:
            return
        if self.bar is None:
            estimate = objects_seen * self.total / self.done
            want = self.enabled is True or (sys.stderr.isatty() and estimate > self.min_objects)
            if not want:
                return
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.done, desc=self.desc, unit="tile", leave=False,
                            file=sys.stderr, dynamic_ncols=True)
        else:
            self.bar.update(1)
        self.bar.set_postfix_str(f"{objects_seen} objects", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
