"""segkit.evaluation.report / figures / object_report: what a reader of eval_report.md sees. Every expected number
is counted by hand from masks drawn here (false positives and negatives, border objects, areas in µm²)."""

from __future__ import annotations

import csv
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp

from segkit.evaluation.evaluate import evaluate
from segkit.evaluation.figures import error_shares, worst_overlay_figure, worst_overlay_png
from segkit.evaluation.object_report import count_error_text, object_report
from segkit.evaluation.report import write_outputs

FP_RGB = (255, 255, 255)  # no class of a 2- or 3-class palette is white
FN_RGB = (255, 128, 0)  # the first false-negative candidate: far from black, red and green


def _errors_case():
    """A 20 x 30 two-class image: 24 missed cell pixels (FN), 15 spurious ones (FP), 60 ignored pixels that
    the prediction gets 'wrong' but that must not count; 540 labelled pixels."""
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 2:10] = 1  # 48 true cell pixels
    mask[18:20, :] = 255  # 60 ignored
    pred = np.zeros_like(mask)
    pred[2:8, 2:6] = 1  # 24 right, so mask[2:8, 6:10] (24 px) are false negatives
    pred[12:15, 20:25] = 1  # 15 false positives
    pred[18:20, :] = 1  # wrong, but ignored
    image = np.full((20, 30, 3), 200, np.uint8)
    return image, mask, pred


def _assert_svg(path: Path) -> None:
    assert path.is_file(), path
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg"), path


def test_error_shares_are_in_percent_of_labelled_pixels():
    _, mask, pred = _errors_case()
    fp, fn = error_shares(mask, pred)
    assert fp == pytest.approx(100 * 15 / 540) and fn == pytest.approx(100 * 24 / 540)
    assert all(math.isnan(v) for v in error_shares(np.full((3, 3), 255, np.uint8), np.zeros((3, 3), np.uint8)))


def test_error_panel_paints_fp_and_fn_in_colours_no_class_uses(tmp_path):
    image, mask, pred = _errors_case()
    fig = worst_overlay_figure(image, mask, pred, ["background", "cell"], "x: mIoU 0.5")
    panel = np.asarray(fig.axes[3].images[0].get_array())
    assert (panel[12:15, 20:25] == FP_RGB).all()
    assert (panel[2:8, 6:10] == FN_RGB).all()
    assert (panel[18:20] == 128).all()  # ignored: grey
    fp_px = (panel == FP_RGB).all(-1)
    fn_px = (panel == FN_RGB).all(-1)
    assert fp_px.sum() == 15 and fn_px.sum() == 24  # nowhere else
    rest = ~(fp_px | fn_px)
    rest[18:20] = False
    assert (panel[rest] == 80).all()  # the input, dimmed to 40 %
    title = fig.axes[3].get_title()
    assert f"FP {100 * 15 / 540:.1f} %" in title and f"FN {100 * 24 / 540:.1f} %" in title and "labelled pixels" in title
    # the legend has the two error colours (and the grey of ignored pixels) next to the class colours
    legend = {t.get_text(): h for lg in fig.legends for t, h in zip(lg.get_texts(), lg.legend_handles, strict=True)}
    fp_label = next(k for k in legend if k.startswith("false positive"))
    fn_label = next(k for k in legend if k.startswith("false negative"))
    assert tuple(np.round(np.array(legend[fp_label].get_facecolor()[:3]) * 255)) == FP_RGB
    assert tuple(np.round(np.array(legend[fn_label].get_facecolor()[:3]) * 255)) == FN_RGB
    assert {"0 background", "1 cell", "not labelled (ignored)"} <= set(legend)
    # written as PNG and SVG; the rendered PNG shows both error colours
    png = worst_overlay_png(image, mask, pred, ["background", "cell"], tmp_path / "w" / "01_x.png", "x")
    _assert_svg(png.with_suffix(".svg"))
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB"))
    assert (rgb == FN_RGB).all(-1).sum() > 24 and (rgb == FP_RGB).all(-1).sum() > 15


def test_a_foreground_swap_is_a_false_negative_of_the_true_class():
    mask = np.zeros((10, 10), np.uint8)
    mask[:, :5] = 2
    pred = np.zeros_like(mask)
    pred[:, :5] = 1  # 50 pixels of class 2 predicted as class 1
    assert error_shares(mask, pred) == (0.0, 50.0)


@pytest.mark.parametrize(("value", "text"), [
    (-0.10, "count error -0.10 = 10 % fewer objects predicted than true"),
    (0.5, "count error +0.50 = 50 % more objects predicted than true"),
    (0.0, "count error 0.00 = as many objects predicted as true"),
    (-0.025, "count error -0.03 = 2.5 % fewer objects predicted than true"),
    (math.nan, "count error n/a (no true objects)"),
])
def test_count_error_sentence_has_sign_and_percent(value, text):
    assert count_error_text(value) == text


def _object_case():
    """Truth: a 6 x 6 cell touching the top border and an 10 x 8 one inside. Prediction: the same two plus a
    4 x 4 cell inside (so 3 predicted vs 2 true)."""
    mask = np.zeros((40, 40), np.uint8)
    mask[0:6, 10:16] = 1  # 36 px, touches the border
    mask[20:30, 20:28] = 1  # 80 px
    pred = mask.copy()
    pred[10:14, 32:36] = 1  # 16 px
    return mask, pred


def test_object_report_areas_in_um2_border_flags_and_size_statistics(tmp_path):
    mask, pred = _object_case()
    res = object_report([pred], [mask], ["a"], ["background", "cell"], ["cell"], None, tmp_path, pixel_size=0.5)
    with (tmp_path / "objects_true.csv").open() as fh:
        true_rows = list(csv.DictReader(fh))
    with (tmp_path / "objects_pred.csv").open() as fh:
        pred_rows = list(csv.DictReader(fh))
    assert [(int(r["area"]), r["touches_border"]) for r in true_rows] == [(36, "True"), (80, "False")]
    assert sorted((int(r["area"]), r["touches_border"]) for r in pred_rows) == [(16, "False"), (36, "True"), (80, "False")]
    for r in true_rows + pred_rows:
        assert float(r["area_um2"]) == pytest.approx(int(r["area"]) * 0.25)
    cell = res["per_class"]["cell"]
    assert (cell["count_true"], cell["count_pred"], cell["tp"]) == (2, 3, 2)  # counts and matching keep the border cell
    assert cell["count_error"] == pytest.approx(0.5)
    assert (cell["border_true"], cell["border_pred"]) == (1, 1)
    assert (cell["size_count_true"], cell["size_count_pred"]) == (1, 2)  # exactly the border cell left out
    assert cell["median_area_true"] == pytest.approx(20.0) and cell["median_area_pred"] == pytest.approx(12.0)
    assert cell["ks_statistic"] == pytest.approx(ks_2samp([20.0, 4.0], [20.0]).statistic)
    assert res["value"] == "area_um2" and res["unit"] == "µm²" and res["exclude_border"] is True
    md = res["markdown"]
    assert "1 of 3 predicted and 1 of 2 true cell objects touch the image border and are left out of the size statistics" in md
    assert "`objects.exclude_border=false` keeps them" in md
    assert "Counts and matching use all objects" in md
    assert "count error +0.50 = 50 % more objects predicted than true" in md
    assert "median area, true (µm²)" in md and "0.5 µm per pixel" in md and "KS p-value" in md and "KS distance D" in md
    for name in ("sizes_cell.png", "sizes_cell.svg"):
        assert name in md
    _assert_svg(tmp_path / "sizes_cell.svg")


def test_object_report_in_pixels_and_keeping_border_objects(tmp_path):
    mask, pred = _object_case()
    # prediction and truth swapped: 2 predicted vs 3 true
    res = object_report([mask], [pred], ["a"], ["background", "cell"], ["cell"], None, tmp_path, exclude_border=False)
    cell = res["per_class"]["cell"]
    assert (cell["size_count_true"], cell["size_count_pred"]) == (3, 2)
    assert cell["median_area_true"] == pytest.approx(36.0) and cell["median_area_pred"] == pytest.approx(58.0)
    md = res["markdown"]
    assert "count error -0.33 = 33 % fewer objects predicted than true" in md
    assert "Sizes are in pixels (px) because no pixel size was given" in md and "pixel_size=" in md
    assert "median area, true (px)" in md and "µm²" not in md.split("Sizes are in pixels")[0]
    assert "they are kept in the size statistics" in md
    with (tmp_path / "objects_true.csv").open() as fh:
        assert "area_um2" not in next(csv.reader(fh))


def test_eval_report_writes_svg_beside_every_png_and_explains_its_numbers(tmp_path):
    image, mask, pred = _errors_case()
    images, masks, preds = [image, image], [mask, np.where(mask == 255, 255, 0).astype(np.uint8)], [pred, np.zeros_like(pred)]
    it = iter(preds)
    result = evaluate(lambda _: next(it), ["background", "cell"], images, masks, ["a", "b"], 255)
    meta = {"checkpoint": "x.ckpt", "checkpoints": ["x.ckpt"], "tta": {}, "postprocess": None, "postprocess_source": "none",
            "run_dir": None, "split": "test", "num_images": 2, "data": {"name": "hand", "root": str(tmp_path)},
            "data_source": "a test", "device": "cpu", "wall_time_s": 0.1}
    mo, mp = _object_case()
    objects = object_report([mp], [mo], ["a"], ["background", "cell"], ["cell"], None, tmp_path / "out", pixel_size=0.5)
    report = write_outputs(tmp_path / "out", result, ["background", "cell"], meta, images, masks, ["a", "b"], 2, objects)
    out = report.parent
    text = report.read_text()
    pngs = sorted(out.rglob("*.png"))
    assert {p.relative_to(out).as_posix() for p in pngs} == {
        "confusion_matrix.png", "per_class.png", "worst/01_a.png", "worst/02_b.png", "sizes_cell.png"}
    for png in pngs:
        rel = png.relative_to(out).as_posix()
        _assert_svg(png.with_suffix(".svg"))
        assert f"]({rel})" in text and f"`{rel[:-4]}.svg`" in text
    # image a: 15 FP and 24 FN of 540 labelled pixels; image b: nothing predicted, nothing true
    assert f"false positives {100 * 15 / 540:.1f} %, false negatives {100 * 24 / 540:.1f} % of its labelled pixels" in text
    assert "false positives 0.0 %, false negatives 0.0 %" in text
    assert "**white** = false positive" in text and "**orange** = false negative" in text
    assert "fractions from 0 to 1" in text and "labelled pixels" in text
    assert "1 of 3 predicted and 1 of 2 true cell objects touch the image border" in text
