"""segkit.evaluation.objects: each test draws shapes whose answer is known by construction (areas are
``np.sum`` of the drawn mask, IoUs are counted by hand) and checks the module against it."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.stats import ks_2samp

from segkit.errors import SegkitError
from segkit.evaluation.objects import (
    OBJECT_COLUMNS,
    UM_COLUMNS,
    compare_sizes,
    instances,
    match_objects,
    object_table,
    size_distribution_test,
    size_histogram_png,
    write_objects_csv,
)

CELL, EDGE, OTHER = 1, 2, 3


def _disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _rect(shape: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


# ---------------------------------------------------------------------------------------------- instances


def test_connected_components_of_drawn_shapes():
    shape = (64, 80)
    shapes = {
        "disk_a": (_disk(shape, 12, 12, 7), CELL),
        "disk_b": (_disk(shape, 45, 60, 10), CELL),
        "rect": (_rect(shape, 40, 55, 5, 30), CELL),
        # touches disk_a (column 19 | 20) but is another class: a separate object
        "other": (_rect(shape, 5, 20, 20, 35), OTHER),
    }
    labels = np.zeros(shape, np.uint8)
    for mask, c in shapes.values():
        assert not labels[mask].any()  # the drawn shapes do not overlap
        labels[mask] = c
    inst, cls = instances(labels, [CELL, OTHER])
    assert inst.dtype == np.int32
    assert len(cls) == 4 and sorted(cls) == [1, 2, 3, 4]
    assert sorted(np.unique(inst[inst > 0]).tolist()) == [1, 2, 3, 4]
    seen = set()
    for name, (mask, c) in shapes.items():
        ids = np.unique(inst[mask])
        assert len(ids) == 1, name
        oid = int(ids[0])
        seen.add(oid)
        assert cls[oid] == c, name
        assert np.sum(inst == oid) == np.sum(mask), name
    assert len(seen) == 4
    assert np.all((inst > 0) == (labels > 0))


def test_components_are_eight_connected():
    labels = np.zeros((10, 10), np.int64)
    labels[1:4, 1:4] = CELL
    labels[4:7, 4:7] = CELL  # touches the first square only at a corner
    labels[8, 8] = CELL
    inst, cls = instances(labels, [CELL])
    assert len(cls) == 2
    assert np.sum(inst == inst[1, 1]) == 18
    assert inst[1, 1] == inst[6, 6]
    assert np.sum(inst == inst[8, 8]) == 1


def _diagonal_cells() -> np.ndarray:
    """A 16x16 square of cell split by a 1-px anti-diagonal edge line (r + c == 19).

    The line is 8-connected, so the interiors on its two sides touch diagonally through it:
    (r, 18 - r) and (r + 1, 19 - r) are corner neighbours.
    """
    labels = np.zeros((20, 20), np.uint8)
    labels[2:18, 2:18] = CELL
    rr, cc = np.mgrid[:20, :20]
    labels[(rr + cc == 19) & (labels == CELL)] = EDGE
    return labels


def test_diagonal_edge_line_is_one_component_without_edge_class():
    labels = _diagonal_cells()
    inst, cls = instances(labels, [CELL])
    assert len(cls) == 1
    assert np.sum(inst > 0) == np.sum(labels == CELL)
    assert np.all(inst[labels == EDGE] == 0)


def test_watershed_splits_cells_at_diagonal_edge_and_assigns_every_edge_pixel():
    labels = _diagonal_cells()
    rr, cc = np.mgrid[:20, :20]
    upper = (labels == CELL) & (rr + cc < 19)
    lower = (labels == CELL) & (rr + cc > 19)
    inst, cls = instances(labels, [CELL], edge_class=EDGE)
    assert cls == {1: CELL, 2: CELL}
    # every cell and edge pixel belongs to a cell; nothing else does
    assert np.array_equal(inst > 0, (labels == CELL) | (labels == EDGE))
    # each interior is wholly one cell, and the two interiors are different cells
    (a,) = np.unique(inst[upper])
    (b,) = np.unique(inst[lower])
    assert a != b
    areas = sorted([np.sum(inst == a), np.sum(inst == b)])
    assert sum(areas) == np.sum(upper) + np.sum(lower) + np.sum(labels == EDGE)
    # the edge pixels are shared between the two cells (every one touches both)
    assert np.sum(inst == a) >= np.sum(upper) and np.sum(inst == b) >= np.sum(lower)


def test_eight_connected_seeds_merge_across_a_diagonal_edge():
    inst, cls = instances(_diagonal_cells(), [CELL], edge_class=EDGE, seed_connectivity=8)
    assert len(cls) == 1
    assert np.sum(inst > 0) == 16 * 16


def test_watershed_gives_each_cell_its_own_edge_ring():
    """Two rectangular cells, each inside a 1-px edge ring; the rings share the column between them."""
    labels = np.zeros((14, 25), np.uint8)
    labels[2:12, 2:23] = EDGE  # both rings, sharing column 12
    labels[3:11, 3:12] = CELL  # left interior 8 x 9
    labels[3:11, 13:22] = CELL  # right interior 8 x 9
    labels[6, 0] = EDGE  # a stray edge pixel touching no cell
    inst, cls = instances(labels, [CELL], edge_class=EDGE)
    assert len(cls) == 2
    left, right = int(inst[5, 5]), int(inst[5, 18])
    assert left != right and {left, right} == {1, 2}
    ring_left = _rect(labels.shape, 2, 12, 2, 12) & ~_rect(labels.shape, 3, 11, 3, 12)
    ring_right = _rect(labels.shape, 2, 12, 13, 23) & ~_rect(labels.shape, 3, 11, 13, 22)
    assert np.all(inst[ring_left] == left)  # nearest to the left cell only
    assert np.all(inst[ring_right] == right)
    shared = inst[2:12, 12]
    assert np.all(np.isin(shared, [left, right]))  # equidistant: either cell, but assigned
    assert np.sum(inst == left) + np.sum(inst == right) == 10 * 21
    assert inst[6, 0] == 0  # unreachable edge pixels stay unassigned


def test_instances_rejects_bad_input():
    with pytest.raises(SegkitError, match="2-D"):
        instances(np.zeros((2, 3, 3), np.uint8), [1])
    with pytest.raises(SegkitError, match="integer"):
        instances(np.zeros((3, 3), np.float32), [1])
    with pytest.raises(SegkitError, match="background"):
        instances(np.zeros((3, 3), np.uint8), [0, 1])
    with pytest.raises(SegkitError, match="edge_class"):
        instances(np.zeros((3, 3), np.uint8), [1], edge_class=1)
    with pytest.raises(SegkitError, match="empty"):
        instances(np.zeros((3, 3), np.uint8), [])
    inst, cls = instances(np.zeros((3, 3), np.uint8), [1], edge_class=2)
    assert cls == {} and not inst.any()


# ------------------------------------------------------------------------------------------- object table


def test_object_table_of_a_rectangle(tmp_path):
    labels = np.zeros((30, 40), np.uint8)
    labels[5:15, 10:30] = CELL  # 10 rows x 20 columns
    inst, cls = instances(labels, [CELL])
    (row,) = object_table(inst, cls, ["background", "cell"], image="a.png")
    assert list(row) == list(OBJECT_COLUMNS)
    assert row["image"] == "a.png" and row["class"] == "cell" and row["id"] == 1
    assert row["area"] == 200
    assert row["centroid_y"] == pytest.approx(9.5) and row["centroid_x"] == pytest.approx(19.5)
    # n pixels in a row have variance (n^2 - 1) / 12; the moment ellipse's axis is 4 standard deviations
    major, minor = 4 * math.sqrt((20**2 - 1) / 12), 4 * math.sqrt((10**2 - 1) / 12)
    assert row["major_axis"] == pytest.approx(major) and row["minor_axis"] == pytest.approx(minor)
    assert row["major_axis"] > row["minor_axis"]
    assert row["eccentricity"] == pytest.approx(math.sqrt(1 - (minor / major) ** 2))
    assert row["solidity"] == pytest.approx(1.0)
    assert 2 * (9 + 19) <= row["perimeter"] <= 2 * (10 + 20)

    (um,) = object_table(inst, cls, ["background", "cell"], pixel_size=0.5, image="a.png")
    assert list(um) == list(OBJECT_COLUMNS) + list(UM_COLUMNS)
    assert um["area_um2"] == pytest.approx(50.0)
    assert um["perimeter_um"] == pytest.approx(row["perimeter"] / 2)
    assert um["major_axis_um"] == pytest.approx(major / 2) and um["minor_axis_um"] == pytest.approx(minor / 2)

    path = write_objects_csv([row, um], tmp_path / "out" / "objects.csv")
    with path.open() as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == list(OBJECT_COLUMNS) + list(UM_COLUMNS)
    assert back[0]["area_um2"] == "" and float(back[1]["area_um2"]) == 50.0
    assert int(back[0]["area"]) == 200


def test_object_table_flags_objects_touching_the_image_border():
    labels = np.zeros((30, 40), np.uint8)
    labels[0:3, 10:14] = CELL  # first row
    labels[27:30, 20:24] = CELL  # last row
    labels[12:15, 0:2] = CELL  # first column
    labels[20:23, 37:40] = CELL  # last column
    labels[5:9, 20:26] = CELL  # inside
    inst, cls = instances(labels, [CELL])
    rows = object_table(inst, cls, ["background", "cell"], pixel_size=0.5)
    assert len(rows) == 5
    inside = next(r for r in rows if r["centroid_y"] == pytest.approx(6.5))
    assert inside["touches_border"] is False and inside["area"] == 24 and inside["area_um2"] == pytest.approx(6.0)
    assert sum(r["touches_border"] for r in rows) == 4
    for r in rows:
        assert r["area_um2"] == pytest.approx(r["area"] * 0.25)
    assert all(list(r)[: len(OBJECT_COLUMNS)] == list(OBJECT_COLUMNS) for r in rows)  # the flag in column order
    # an object one pixel in from every edge does not touch
    inner = np.zeros((10, 10), np.int32)
    inner[1:9, 1:9] = 1
    (row,) = object_table(inner, {1: 1}, ["background", "cell"])
    assert row["touches_border"] is False
    full = np.ones((10, 10), np.int32)
    (row,) = object_table(full, {1: 1}, ["background", "cell"])
    assert row["touches_border"] is True


def test_object_table_rejects_unknown_classes():
    inst = np.zeros((5, 5), np.int32)
    inst[1:3, 1:3] = 1
    with pytest.raises(SegkitError, match="without a class"):
        object_table(inst, {}, ["background", "cell"])
    with pytest.raises(SegkitError, match="class names"):
        object_table(inst, {1: 5}, ["background", "cell"])
    with pytest.raises(SegkitError, match="pixel_size"):
        object_table(inst, {1: 1}, ["background", "cell"], pixel_size=0.0)
    assert object_table(np.zeros((4, 4), np.int32), {}, ["bg"]) == []


# ----------------------------------------------------------------------------------------------- matching


def _truth():
    shape = (60, 60)
    inst = np.zeros(shape, np.int32)
    inst[_rect(shape, 2, 12, 2, 12)] = 1  # A, class 1
    inst[_disk(shape, 30, 30, 6)] = 2  # B, class 1
    inst[_rect(shape, 45, 55, 5, 25)] = 3  # C, class 1
    inst[_rect(shape, 5, 15, 40, 55)] = 4  # D, class 2
    return inst, {1: 1, 2: 1, 3: 1, 4: 2}


def test_match_one_missed_and_one_spurious_object():
    true_inst, true_cls = _truth()
    # prediction: C removed, a spurious class-1 object E added, ids permuted
    pred_inst = np.zeros_like(true_inst)
    pred_inst[true_inst == 1] = 7
    pred_inst[true_inst == 2] = 3
    pred_inst[true_inst == 4] = 9
    pred_inst[40:48, 40:50] = 5  # E, overlaps nothing
    pred_cls = {7: 1, 3: 1, 9: 2, 5: 1}
    r = match_objects(pred_inst, pred_cls, true_inst, true_cls)
    o = r["overall"]
    # by hand: 3 matches (A, B, D); 4 predicted, 4 true
    assert (o["tp"], o["fp"], o["fn"], o["count_pred"], o["count_true"]) == (3, 1, 1, 4, 4)
    assert o["precision"] == pytest.approx(3 / 4) and o["recall"] == pytest.approx(3 / 4)
    assert o["f1"] == pytest.approx(3 / 4) and o["count_error"] == 0.0
    assert o["mean_matched_iou"] == pytest.approx(1.0)
    c1, c2 = r["per_class"][1], r["per_class"][2]
    assert (c1["tp"], c1["count_pred"], c1["count_true"]) == (2, 3, 3)
    assert c1["precision"] == pytest.approx(2 / 3) and c1["recall"] == pytest.approx(2 / 3)
    assert c1["f1"] == pytest.approx(2 / 3)
    assert (c2["tp"], c2["precision"], c2["recall"], c2["f1"]) == (1, 1.0, 1.0, 1.0)
    assert sorted((p, t) for p, t, _ in r["matches"]) == [(3, 2), (7, 1), (9, 4)]


def test_unequal_counts_give_count_error():
    true_inst, true_cls = _truth()
    pred_inst = np.where(true_inst == 3, 0, true_inst).astype(np.int32)  # C missed, nothing added
    r = match_objects(pred_inst, true_cls, true_inst, true_cls)
    o = r["overall"]
    assert (o["tp"], o["count_pred"], o["count_true"]) == (3, 3, 4)
    assert o["precision"] == 1.0 and o["recall"] == pytest.approx(3 / 4)
    assert o["f1"] == pytest.approx(2 * 3 / 7) and o["count_error"] == pytest.approx(-1 / 4)


def test_same_pixels_of_another_class_do_not_match():
    true_inst, true_cls = _truth()
    r = match_objects(true_inst, {1: 1, 2: 1, 3: 1, 4: 1}, true_inst, true_cls)
    assert r["overall"]["tp"] == 3
    assert r["per_class"][2]["tp"] == 0 and r["per_class"][2]["count_pred"] == 0
    assert math.isnan(r["per_class"][2]["precision"]) and r["per_class"][2]["recall"] == 0.0


def test_shifted_square_iou():
    true_inst = np.zeros((20, 30), np.int32)
    true_inst[5:15, 5:15] = 1
    far = np.zeros_like(true_inst)
    far[5:15, 9:19] = 1  # shifted 4 px: intersection 60, union 140, IoU 3/7 < 0.5
    r = match_objects(far, {1: 1}, true_inst, {1: 1})
    assert r["overall"]["tp"] == 0 and r["matches"] == []
    r = match_objects(far, {1: 1}, true_inst, {1: 1}, iou_threshold=0.4)
    assert r["overall"]["tp"] == 1 and r["matches"][0][2] == pytest.approx(3 / 7)
    near = np.zeros_like(true_inst)
    near[5:15, 7:17] = 1  # shifted 2 px: 80 / 120
    r = match_objects(near, {1: 1}, true_inst, {1: 1})
    assert r["overall"]["tp"] == 1 and r["overall"]["mean_matched_iou"] == pytest.approx(2 / 3)


def test_matching_is_one_to_one_at_and_below_half():
    # one prediction exactly covering two halves: IoU 0.5 with each, only one may count
    true_inst = np.zeros((10, 20), np.int32)
    true_inst[:, :10], true_inst[:, 10:] = 1, 2
    pred = np.ones_like(true_inst)
    r = match_objects(pred, {1: 1}, true_inst, {1: 1, 2: 1}, iou_threshold=0.5)
    assert r["overall"]["tp"] == 1 and r["overall"]["fn"] == 1
    # P1 (cols 3..12) has IoU 70/130 with T1 and 30/170 with T2; P2 (cols 0..2) has 30/100 with T1.
    # Taking the best pair first (P1-T1) leaves P2 unmatched; the one-to-one matching with most
    # matches is P1-T2 and P2-T1.
    pred = np.zeros_like(true_inst)
    pred[:, 3:13], pred[:, 0:3] = 1, 2
    r = match_objects(pred, {1: 1, 2: 1}, true_inst, {1: 1, 2: 1}, iou_threshold=0.15)
    assert sorted((p, t) for p, t, _ in r["matches"]) == [(1, 2), (2, 1)]
    assert sorted(v for _, _, v in r["matches"]) == pytest.approx([30 / 170, 30 / 100])


def test_matched_ious_equal_pixel_counts_on_random_instances():
    rng = np.random.default_rng(0)
    labels = (rng.random((96, 96)) > 0.55).astype(np.uint8)
    true_inst, true_cls = instances(labels, [1])
    noisy = labels.copy()
    noisy[rng.random(labels.shape) < 0.03] ^= 1
    pred_inst, pred_cls = instances(noisy, [1])
    r = match_objects(pred_inst, pred_cls, true_inst, true_cls, iou_threshold=0.3)
    assert r["matches"]
    for p, t, iou in r["matches"]:
        a, b = pred_inst == p, true_inst == t
        assert iou == pytest.approx(np.sum(a & b) / np.sum(a | b))
        assert iou >= 0.3
    assert len({p for p, _, _ in r["matches"]}) == len(r["matches"]) == len({t for _, t, _ in r["matches"]})


def test_match_rejects_bad_input():
    a = np.zeros((4, 4), np.int32)
    with pytest.raises(SegkitError, match="same shape"):
        match_objects(a, {}, np.zeros((4, 5), np.int32), {})
    with pytest.raises(SegkitError, match="iou_threshold"):
        match_objects(a, {}, a, {}, iou_threshold=0.0)
    a[0, 0] = 1
    with pytest.raises(SegkitError, match="without a class"):
        match_objects(a, {}, a, {1: 1})


# -------------------------------------------------------------------------------------- size statistics


def test_ks_identical_samples():
    sizes = [12, 40, 40, 55, 80, 81, 200]
    r = size_distribution_test(sizes, list(sizes))
    assert r["statistic"] == 0.0 and r["pvalue"] == pytest.approx(1.0)
    assert (r["n_a"], r["n_b"]) == (7, 7) and r["median_a"] == 55.0 and r["reason"] is None
    assert r["mean_a"] == pytest.approx(np.mean(sizes))


def test_ks_separated_samples():
    # disjoint samples of 3 and 3: D = 1, and exactly 2 of the C(6, 3) = 20 orderings reach it
    r = size_distribution_test([1, 2, 3], [4, 5, 6])
    assert r["statistic"] == 1.0 and r["pvalue"] == pytest.approx(2 / 20)
    r = size_distribution_test(np.arange(10, 21), np.arange(100, 121))
    assert r["statistic"] == 1.0 and r["pvalue"] < 0.001
    assert (r["median_a"], r["median_b"]) == (15.0, 110.0)


def test_ks_matches_scipy_on_random_samples():
    rng = np.random.default_rng(1)
    a, b = rng.lognormal(4.0, 0.5, 137), rng.lognormal(4.1, 0.5, 90)
    r = size_distribution_test(a, b)
    ref = ks_2samp(a, b)
    assert r["statistic"] == pytest.approx(ref.statistic) and r["pvalue"] == pytest.approx(ref.pvalue)


def test_ks_empty_sample_gives_nan_and_a_reason():
    r = size_distribution_test([], [3.0, 5.0])
    assert math.isnan(r["pvalue"]) and math.isnan(r["statistic"]) and "sizes_a is empty" in r["reason"]
    assert r["n_a"] == 0 and r["median_b"] == 4.0 and math.isnan(r["median_a"])
    assert "are empty" in size_distribution_test([], [])["reason"]
    with pytest.raises(SegkitError, match="non-finite"):
        size_distribution_test([1.0, float("nan")], [2.0])


def test_size_histogram_png(tmp_path):
    rng = np.random.default_rng(2)
    groups = {"prediction": rng.normal(120, 20, 300), "ground truth": rng.normal(135, 25, 250)}
    path = size_histogram_png(groups, tmp_path / "h" / "sizes.png", "cell area")
    assert path.exists() and path.stat().st_size > 10_000
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert w >= 600 and h >= 400
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 10  # not a blank canvas
    # three groups (no KS annotation) and an empty group still draw
    p3 = size_histogram_png({"a": [1, 2, 3], "b": [], "c": [2, 2]}, tmp_path / "three.png", "t")
    with Image.open(p3) as im:
        assert im.format == "PNG"
    with pytest.raises(SegkitError, match="no groups"):
        size_histogram_png({}, tmp_path / "none.png", "t")
    # a path ending in .svg is written as SVG (XML)
    import xml.etree.ElementTree as ET

    svg = size_histogram_png(groups, tmp_path / "h" / "sizes.svg", "cell area", xlabel="area (µm²)")
    assert ET.parse(svg).getroot().tag.endswith("svg")


def test_compare_sizes_per_image_and_pooled(tmp_path):
    def rows(image, areas, cls="cell"):
        return [{"image": image, "id": i + 1, "class": cls, "area": a} for i, a in enumerate(areas)]

    pred = rows("x", [10, 11, 12]) + rows("y", [13, 14]) + rows("y", [500], cls="debris")
    true = rows("x", [100, 110]) + rows("y", [120, 130, 140]) + rows("z", [150])
    r = compare_sizes(pred, true, "cell", histogram=tmp_path / "pooled.png")
    assert set(r["per_image"]) == {"x", "y", "z"}
    assert (r["per_image"]["x"]["n_a"], r["per_image"]["x"]["n_b"]) == (3, 2)
    assert r["per_image"]["z"]["n_a"] == 0 and math.isnan(r["per_image"]["z"]["pvalue"])
    pooled = r["pooled"]
    assert (pooled["n_a"], pooled["n_b"]) == (5, 6) and pooled["statistic"] == 1.0
    ref = ks_2samp([10, 11, 12, 13, 14], [100, 110, 120, 130, 140, 150])
    assert pooled["pvalue"] == pytest.approx(ref.pvalue)
    assert r["histogram"].exists()
    with pytest.raises(SegkitError, match="area_um2"):
        compare_sizes(pred, true, "cell", value="area_um2")


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5])
def test_match_count_equals_a_brute_force_maximum_matching(threshold):
    """IoUs computed mask by mask, and the largest one-to-one matching found over the whole table."""
    rng = np.random.default_rng(0)
    labels = (ndimage.uniform_filter(rng.random((64, 64)), 3) > 0.55).astype(np.uint8)
    true_inst, true_cls = instances(labels, [1])
    # the prediction merges extra blobs into the truth and punches holes: at a low threshold some
    # objects have several candidates (12 conflicting groups at 0.1 with this seed)
    noisy = (ndimage.uniform_filter(rng.random((64, 64)), 3) > 0.55).astype(np.uint8) | labels
    noisy[rng.random(labels.shape) < 0.1] = 0
    pred_inst, pred_cls = instances(noisy, [1])
    p_ids, t_ids = sorted(pred_cls), sorted(true_cls)
    iou = np.zeros((len(p_ids), len(t_ids)))
    for i, p in enumerate(p_ids):
        a = pred_inst == p
        for j, t in enumerate(t_ids):
            b = true_inst == t
            iou[i, j] = np.sum(a & b) / np.sum(a | b)
    rows, cols = linear_sum_assignment(iou >= threshold, maximize=True)
    best = int(np.sum((iou >= threshold)[rows, cols]))
    r = match_objects(pred_inst, pred_cls, true_inst, true_cls, iou_threshold=threshold)
    assert r["overall"]["tp"] == best


def test_sizes_command_compares_object_tables(tmp_path, capsys):
    from scipy.stats import ks_2samp

    from segkit.analysis.__main__ import main as analysis_main

    a, b = [10.0, 12, 14, 16, 18], [100.0, 110, 120, 130]
    for name, values in (("a.csv", a), ("b.csv", b)):
        rows = [{"image": "x", "id": i + 1, "class": "cell", "area": v} for i, v in enumerate(values)]
        rows.append({"image": "x", "id": 99, "class": "edge", "area": 5000})  # another class: ignored
        write_objects_csv(rows, tmp_path / name)
    png = tmp_path / "sizes.png"
    assert analysis_main(["sizes", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--class", "cell", "--labels", "A", "B", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    ref = ks_2samp(a, b)
    assert "A: 5 cell objects" in out and f"D = {ref.statistic:.4f}, p = {ref.pvalue:.4g}" in out
    assert png.stat().st_size > 5000
