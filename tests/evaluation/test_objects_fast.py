"""The vectorised object table (segkit.evaluation.object_stats) against the former one-regionprops-call-per-object
table (``_object_table_reference``), on maps drawn to cover every case: 1-pixel objects, lines at all angles,
objects with holes, objects split into pieces that share one id, objects on the image border, many classes,
sparse and negative ids; tiled tables (instance and class maps) against the whole-image reference.

Tolerances (``_assert_tables_match``), and why:

* exact: ``image``, ``id``, ``class``, ``area``, ``touches_border`` (integers) and ``solidity`` (both tables
  divide the same two integers, area and the count of pixel centres in the hull);
* ``perimeter`` and the centroids: 1e-12 relative (the same terms summed in another order);
* ``major_axis``: 1e-9 relative (second moments from exact integer sums vs skimage's float moments);
* ``minor_axis``: 1e-9 relative plus 3e-8 x ``major_axis`` absolute, and ``eccentricity``: 3e-8 absolute.
  skimage takes the eigenvalues with ``np.linalg.eigvalsh``, whose small eigenvalue carries an absolute
  error of about machine epsilon x the large one; after the square root that is sqrt(eps) ~ 1.5e-8 of the
  major axis (a 2-pixel diagonal gets minor axis 2.1e-8 there and exactly 0 here). The same floor
  bounds ``eccentricity`` near 0 (round objects).
* the *_um columns: as the pixel column they scale.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from segkit.errors import SegkitError
from segkit.evaluation import object_stats
from segkit.evaluation.object_stats import HALO, TiledObjects, iter_windows
from segkit.evaluation.objects import (
    _object_table_reference,
    instances,
    object_columns,
    object_table,
    object_table_tiled,
)

NAMES = ["background", "a", "b", "c", "d", "e"]
EXACT = ("image", "id", "class", "area", "touches_border", "solidity")


def _mismatches(new: list[dict], ref: list[dict]) -> list[str]:
    """What differs between two tables beyond the tolerances in the module docstring."""
    if len(new) != len(ref):
        return [f"{len(new)} rows vs {len(ref)}"]
    out = []
    for a, b in zip(new, ref, strict=True):
        if list(a) != list(b):
            out.append(f"columns {list(a)} vs {list(b)}")
            continue
        for k, v in a.items():
            w = b[k]
            if k in EXACT:
                ok = v == w and type(v) is type(w)
            elif k in ("perimeter", "centroid_y", "centroid_x", "perimeter_um", "area_um2"):
                ok = math.isclose(v, w, rel_tol=1e-12, abs_tol=1e-12)
            elif k in ("major_axis", "major_axis_um"):
                ok = math.isclose(v, w, rel_tol=1e-9, abs_tol=1e-12)
            elif k in ("minor_axis", "minor_axis_um"):
                major = a["major_axis_um"] if k.endswith("_um") else a["major_axis"]
                ok = math.isclose(v, w, rel_tol=1e-9, abs_tol=3e-8 * major + 1e-12)
            elif k == "eccentricity":
                ok = abs(v - w) <= 3e-8
            else:
                ok = False
            if not ok:
                out.append(f"id {a['id']} {k}: {v!r} vs {w!r}")
    return out


def _assert_tables_match(new: list[dict], ref: list[dict]) -> None:
    bad = _mismatches(new, ref)
    assert not bad, bad[:10]


# ------------------------------------------------------------------------------------------ drawn maps


def _line(inst: np.ndarray, y0: int, x0: int, y1: int, x1: int, value: int) -> None:
    n = max(abs(y1 - y0), abs(x1 - x0)) + 1
    yy = np.round(np.linspace(y0, y1, n)).astype(int)
    xx = np.round(np.linspace(x0, x1, n)).astype(int)
    inst[yy, xx] = value


def _drawn(seed: int, shape: tuple[int, int] = (90, 110)) -> tuple[np.ndarray, dict[int, int]]:
    """Shapes of every kind with sparse, shuffled ids; later shapes overwrite earlier ones."""
    rng = np.random.default_rng(seed)
    h, w = shape
    inst = np.zeros(shape, np.int64)
    yy, xx = np.mgrid[:h, :w]
    ids = rng.permutation(np.arange(1, 400))[:80] * 7919  # sparse, not in drawing order
    k = 0
    for _ in range(10):  # discs and rings (holes), some cut by the border
        cy, cx, r = rng.uniform(-5, h + 5), rng.uniform(-5, w + 5), rng.uniform(1, 14)
        d = (yy - cy) ** 2 + (xx - cx) ** 2
        m = d <= r * r
        if r > 4 and rng.random() < 0.6:
            m &= d > (r * rng.uniform(0.2, 0.7)) ** 2
        inst[m] = ids[k]
        k += 1
    for _ in range(8):  # rectangles
        y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
        inst[y0 : y0 + rng.integers(1, 12), x0 : x0 + rng.integers(1, 12)] = ids[k]
        k += 1
    for _ in range(14):  # 1-pixel lines at random angles (8-connected)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = np.clip(y0 + rng.integers(-15, 16), 0, h - 1), np.clip(x0 + rng.integers(-15, 16), 0, w - 1)
        _line(inst, y0, x0, y1, x1, ids[k])
        k += 1
    for _ in range(12):  # single pixels, one in each corner
        inst[rng.integers(0, h), rng.integers(0, w)] = ids[k]
        k += 1
    for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)):
        inst[y, x] = ids[k]
        k += 1
    # one id in two far-apart pieces with empty rows between them (the hull spans the gap)
    inst[5:8, 5:9] = ids[k]
    inst[20:22, 30:31] = ids[k]
    k += 1
    # noise: small random blobs of one more id each
    blobs, n = ndimage.label(ndimage.uniform_filter(rng.random(shape), 3) > 0.62)
    free = inst == 0
    for i in range(1, min(n, 20) + 1):
        inst[(blobs == i) & free] = ids[k]
        k += 1
    present = [int(v) for v in np.unique(inst) if v]
    return inst, {i: int(rng.integers(1, len(NAMES))) for i in present}


@pytest.mark.parametrize("seed", range(6))
def test_table_matches_regionprops_on_drawn_maps(seed):
    inst, cls = _drawn(seed)
    assert len(cls) > 40
    px = None if seed % 2 else 0.37
    _assert_tables_match(object_table(inst, cls, NAMES, px, "m"), _object_table_reference(inst, cls, NAMES, px, "m"))


@pytest.mark.parametrize(
    "seed, shape", [(0, (30, 37)), (1, (41, 23)), pytest.param(2, (160, 170), marks=pytest.mark.slow)]
)
def test_table_matches_regionprops_on_random_class_maps(seed, shape):
    """Noise maps of five classes: hundreds of tiny objects, every kind of touching neighbour."""
    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(0, 6, shape).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.3] = 0
    inst, cls = instances(labels, [1, 2, 3, 4, 5])
    assert len(cls) > 150
    _assert_tables_match(object_table(inst, cls, NAMES, 0.5), _object_table_reference(inst, cls, NAMES, 0.5))


def test_table_matches_regionprops_on_watershed_cells():
    """Touching cells grown by the watershed (instances with an edge class)."""
    rng = np.random.default_rng(7)
    field = ndimage.gaussian_filter(rng.random((96, 96)), 4)
    labels = np.where(field > np.median(field), 1, 0).astype(np.uint8)
    edges = ndimage.morphological_gradient(ndimage.label(labels)[0], size=2) > 0
    labels[edges & (labels == 1)] = 2
    inst, cls = instances(labels, [1], edge_class=2)
    assert len(cls) > 3
    _assert_tables_match(object_table(inst, cls, NAMES), _object_table_reference(inst, cls, NAMES))


def test_small_cases_match_regionprops():
    cases = [
        np.ones((1, 1), np.int32),  # a 1 x 1 map
        np.ones((1, 9), np.int32),  # a single row
        np.ones((9, 1), np.int32),
        np.eye(12, dtype=np.int32),  # a diagonal line: minor axis 0 (skimage: ~1e-8)
        np.fliplr(np.eye(12, dtype=np.int32)) * 3,
        np.pad(np.ones((3, 3), np.int32), 4),
        (np.indices((15, 15)).sum(0) % 2).astype(np.int32),  # a checkerboard: one 8-connected id
    ]
    for inst in cases:
        cls = {int(i): 1 for i in np.unique(inst) if i}
        _assert_tables_match(object_table(inst, cls, NAMES), _object_table_reference(inst, cls, NAMES))


def test_dtypes_and_negative_ids_behave_as_before():
    inst, cls = _drawn(11, (40, 50))
    small = np.zeros_like(inst, dtype=np.uint16)
    ids = sorted(cls)
    remap = {i: k + 1 for k, i in enumerate(ids)}
    for i, k in remap.items():
        small[inst == i] = k
    small_cls = {remap[i]: c for i, c in cls.items()}
    _assert_tables_match(object_table(small, small_cls, NAMES), _object_table_reference(small, small_cls, NAMES))
    mask = inst > 0  # a boolean map: one object, id 1
    _assert_tables_match(object_table(mask, {1: 1}, NAMES), _object_table_reference(mask.astype(np.int32), {1: 1}, NAMES))
    neg = small.astype(np.int32)
    neg[0:3, 0:3] = -4  # negative ids need a class but give no row, as regionprops does
    cls_neg = {**small_cls, -4: 1}
    _assert_tables_match(object_table(neg, cls_neg, NAMES), _object_table_reference(neg, cls_neg, NAMES))
    with pytest.raises(SegkitError, match="without a class"):
        object_table(neg, small_cls, NAMES)


def test_errors_match_the_former_table():
    inst = np.zeros((5, 5), np.int32)
    inst[1:3, 1:3] = 1
    inst[4, 4] = 9
    for args, match in (
        (({1: 1}, NAMES), "without a class"),
        (({1: 1, 9: 8}, NAMES), "class names"),
    ):
        for fn in (object_table, _object_table_reference):
            with pytest.raises(SegkitError, match=match) as err:
                fn(inst, *args)
            if fn is object_table:
                new = str(err.value)
            else:
                assert str(err.value) == new
    with pytest.raises(SegkitError, match="pixel_size"):
        object_table(inst, {1: 1, 9: 1}, NAMES, pixel_size=-1.0)
    assert object_table(np.zeros((3, 4), np.int32), {}, NAMES) == []


def test_comparison_detects_a_difference():
    """The check above can fail: one pixel removed from the reference's map changes area and centroid."""
    inst, cls = _drawn(0)
    moved = inst.copy()
    (ys, xs) = np.nonzero(moved == max(cls, key=lambda i: np.sum(inst == i)))
    moved[ys[0], xs[0]] = 0
    bad = _mismatches(object_table(inst, cls, NAMES), _object_table_reference(moved, cls, NAMES))
    assert any(" area:" in b for b in bad) and any("centroid" in b for b in bad)
    # and the columns really come from the new code, not from regionprops
    cols = object_columns(inst)
    assert cols["area"].sum() == np.count_nonzero(inst)


# ---------------------------------------------------------------------------------------- convex hulls


def _brute_minorant(y: np.ndarray, x: np.ndarray) -> set[int]:
    keep = set()
    for i in range(len(y)):
        ok = True
        for p in range(i):
            for n in range(i + 1, len(y)):
                if (x[i] - x[p]) * (y[n] - y[p]) >= (x[n] - x[p]) * (y[i] - y[p]):
                    ok = False
        if ok:
            keep.add(i)
    return keep


@pytest.mark.parametrize("rounds", [64, 1])
def test_hull_pruning_finds_the_convex_minorant(rounds, monkeypatch):
    """Vectorised pruning (and, with the round limit at 1, its monotone-chain finish) vs brute force."""
    monkeypatch.setattr(object_stats, "_PRUNE_ROUNDS", rounds)
    rng = np.random.default_rng(rounds)
    sizes = rng.integers(1, 30, 40)
    obj = np.repeat(np.arange(sizes.size), sizes)
    y = np.concatenate([np.sort(rng.choice(60, s, replace=False)) for s in sizes])
    x = rng.integers(-20, 20, obj.size)
    alive = object_stats._prune_minorant(obj, y, x)
    start = 0
    for s in sizes:
        got = set(np.flatnonzero(alive[start : start + s]).tolist())
        assert got == _brute_minorant(y[start : start + s], x[start : start + s])
        start += s


# ------------------------------------------------------------------------------------------- tiles


def _corner_map(h: int = 37, w: int = 41) -> tuple[np.ndarray, np.ndarray]:
    """A class map whose objects cross tile edges and corners for the tile sizes used below, plus one
    U whose arms meet only in another tile and a spiral that joins through many tiles."""
    labels = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    labels[(yy - 16) ** 2 + (xx - 16) ** 2 <= 30] = 1  # around the corner (16, 16)
    labels[(yy - 8) ** 2 + (xx - 24) ** 2 <= 6] = 2
    labels[2:30, 2] = 3
    labels[29, 2:12] = 3
    labels[2:30, 11] = 3  # a U: arms in one tile, bottom in the next
    for k in range(8):  # a diagonal chain of corner-touching pixels across tile corners
        labels[30 - k, 30 + k] = 1
    labels[33:36, 20:40] = 2
    labels[35, 20:40] = 1  # two classes touching across a seam: separate objects
    labels[0, :] = 4  # the border row
    rng = np.random.default_rng(0)
    noise = rng.integers(1, 5, (h, w)).astype(np.uint8)
    keep = rng.random((h, w)) < 0.12
    labels[keep & (labels == 0)] = noise[keep & (labels == 0)]
    inst, _ = instances(labels, [1, 2, 3, 4])
    return labels, inst


@pytest.mark.parametrize("tile", [1, 2, 3, 8, (5, 16), (16, 7), 64])
def test_tiled_instance_table_equals_the_whole_table(tile):
    labels, _ = _corner_map()
    inst, cls = instances(labels, [1, 2, 3, 4])
    ref = _object_table_reference(inst, cls, NAMES, 0.25, "t")
    tiled = object_table_tiled(inst, inst.shape, NAMES, cls, tile=tile, pixel_size=0.25, image="t")
    _assert_tables_match(tiled, ref)
    assert tiled == object_table(inst, cls, NAMES, 0.25, "t")  # the merged sums are the same integers


@pytest.mark.parametrize("tile", [1, 3, 8, (5, 16), 64])
def test_tiled_components_are_numbered_as_instances_numbers_them(tile):
    labels, _ = _corner_map()
    for classes in ([1, 2, 3, 4], [3, 1]):
        inst, cls = instances(labels, classes)
        ref = _object_table_reference(inst, cls, NAMES)
        reader_calls: list[tuple[int, int, int, int]] = []

        def read(y0, y1, x0, x1, calls=reader_calls):
            calls.append((y0, y1, x0, x1))
            return labels[y0:y1, x0:x1]

        tiled = object_table_tiled(read, labels.shape, NAMES, object_classes=classes, tile=tile)
        _assert_tables_match(tiled, ref)
        assert reader_calls and all(y1 - y0 <= (tile if isinstance(tile, int) else tile[0]) + 2 * HALO
                                    for y0, y1, _, _ in reader_calls)


def test_union_find_joins_pieces_across_seams_only_where_they_touch():
    labels = np.zeros((8, 8), np.uint8)
    labels[3, 3] = labels[4, 4] = 1  # corner contact across the corner of four 4 x 4 tiles
    labels[0, 3] = labels[1, 4] = 1  # diagonal contact across a vertical seam
    labels[6, 3] = 1
    labels[6, 4] = 2  # edge contact, but another class
    labels[7, 0:8] = 2  # one row through both bottom tiles: joins with (6, 4) only
    acc = TiledObjects(labels.shape, object_classes=[1, 2])
    for y0, x0, win in iter_windows(labels, labels.shape, 4):
        acc.add(y0, x0, win)
    cols = acc.columns()
    inst, cls = instances(labels, [1, 2])
    assert len(cols["id"]) == len(cls) == 4  # (3,3)+(4,4); (0,3)+(1,4); (6,3); (6,4)+row 7
    assert acc.objects_seen == 7  # the pieces in the four tiles: the merge did the work
    assert cols["area"].tolist() == [int(np.sum(inst == i)) for i in sorted(cls)]
    assert [NAMES[[1, 2][k]] for k in cols["class_index"]] == [NAMES[cls[i]] for i in sorted(cls)]


def _spiral(n: int) -> np.ndarray:
    """A 1-pixel square spiral from the centre out (arms 2 pixels apart): one 8-connected object."""
    labels = np.zeros((n, n), np.uint8)
    y = x = n // 2
    labels[y, x] = 1
    steps, k = 2, 0
    while True:
        for _ in range(2):
            dy, dx = ((0, 1), (1, 0), (0, -1), (-1, 0))[k % 4]
            for _ in range(steps):
                y, x = y + dy, x + dx
                if not (0 <= y < n and 0 <= x < n):
                    return labels
                labels[y, x] = 1
            k += 1
        steps += 2


def test_tiled_spiral_merges_through_many_tiles():
    labels = _spiral(41)
    inst, cls = instances(labels, [1])
    assert len(cls) == 1
    acc = TiledObjects(labels.shape, object_classes=[1])
    for y0, x0, win in iter_windows(labels, labels.shape, 3):
        acc.add(y0, x0, win)
    assert acc.objects_seen > 100  # cut into many pieces...
    tiled = object_table_tiled(labels, labels.shape, NAMES, object_classes=[1], tile=3)
    _assert_tables_match(tiled, _object_table_reference(inst, cls, NAMES))  # ...joined into one


def test_tiles_must_cover_the_map():
    labels, _ = _corner_map()
    acc = TiledObjects(labels.shape)
    windows = list(iter_windows(labels, labels.shape, 16))
    for y0, x0, win in windows[:-1]:
        acc.add(y0, x0, win)
    with pytest.raises(SegkitError, match="cover"):
        acc.columns()
    with pytest.raises(SegkitError, match="leaves"):
        acc.add(30, 30, np.zeros((20, 20), np.int32))
    with pytest.raises(SegkitError, match="shape"):
        object_table_tiled(lambda *a: np.zeros((2, 2), np.uint8), (10, 10), NAMES, object_classes=[1], tile=4)
    with pytest.raises(SegkitError, match="exactly one"):
        object_table_tiled(labels, labels.shape, NAMES, tile=4)


# ----------------------------------------------------------------------------------------- progress


def test_progress_bar_only_when_asked_or_on_a_terminal(capsys):
    rng = np.random.default_rng(0)
    inst, cls = instances((rng.random((300, 64)) > 0.6).astype(np.uint8), [1])
    object_table(inst, cls, NAMES)  # stderr is no terminal under pytest: no bar
    object_table_tiled(inst, inst.shape, NAMES, cls, tile=32)
    assert capsys.readouterr().err == ""
    rows = object_table_tiled(inst, inst.shape, NAMES, cls, tile=32, progress=True)
    err = capsys.readouterr().err
    assert "measuring objects" in err and "tile" in err
    assert rows == object_table(inst, cls, NAMES)


# ------------------------------------------------------------------------------------------- larger


@pytest.mark.slow
def test_large_grid_of_shapes_matches_regionprops():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from objects_bench import compare_tables, synthetic_instances

    inst, cls = synthetic_instances(70, 12, seed=3)
    names = ["background", "cell", "debris"]
    new = object_table(inst, cls, names, 0.5)
    ref = _object_table_reference(inst, cls, names, 0.5)
    _assert_tables_match(new, ref)
    assert compare_tables(new, ref)["equal"]
    labels = np.zeros(inst.shape, np.uint8)
    lut = np.array([0] + [cls[i] for i in range(1, len(cls) + 1)], np.uint8)
    labels = lut[inst]
    r_inst, r_cls = instances(labels, [1, 2])
    tiled = object_table_tiled(labels, labels.shape, names, object_classes=[1, 2], tile=100, pixel_size=0.5)
    assert tiled == object_table(r_inst, r_cls, names, 0.5)
