"""ISBI 2012 EM scores (segkit.evaluation.em): V_rand against scikit-image, V_info against an entropy
recount and skimage's variation of information, hand-made split / merge cases, the pixel error, and
``segkit.eval`` on a tiny isbi2012-format run."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import adapted_rand_error, variation_of_information

from segkit.errors import SegkitError
from segkit.evaluation.em import (
    check_thresholds,
    contingency,
    em_scores,
    info_scores,
    mean_over_slices,
    membrane_class,
    rand_scores,
    segmentation_scores,
)
from tests.conftest import compose_cfg

rng = np.random.default_rng(0)


def _random_pair(shape=(40, 50), k_true=7, k_seg=9):
    """Random label maps with zeros (truth 0 = not counted, seg 0 = predicted membrane)."""
    truth = rng.integers(0, k_true, shape)
    seg = np.where(rng.random(shape) < 0.7, truth * 3 % k_seg, rng.integers(0, k_seg, shape))
    return seg, truth


def _counter_scores(seg, truth):
    """Independent recount from label pairs: Rand sums (with replacement) and entropies in bits."""
    fg = truth > 0
    pairs = Counter(zip(seg[fg].tolist(), truth[fg].tolist(), strict=True))
    s_sizes, t_sizes = Counter(seg[fg].tolist()), Counter(truth[fg].tolist())
    n = int(fg.sum())

    def h(counter):
        return -sum(c / n * math.log2(c / n) for c in counter.values())

    mi = sum(c / n * math.log2((c / n) / ((s_sizes[s] / n) * (t_sizes[t] / n))) for (s, t), c in pairs.items())
    both = sum(c * c for c in pairs.values())
    return {"both": both, "ss": sum(c * c for c in s_sizes.values()), "tt": sum(c * c for c in t_sizes.values()),
            "n": n, "h_s": h(s_sizes), "h_t": h(t_sizes), "mi": mi}


@pytest.mark.parametrize("trial", range(5))
def test_v_rand_matches_skimage_adapted_rand_error_on_random_segmentations(trial):
    seg, truth = _random_pair()
    n_ij, s_i, t_j = contingency(seg, truth)
    ref = _counter_scores(seg, truth)
    assert (int(n_ij @ n_ij), int(s_i @ s_i), int(t_j @ t_j)) == (ref["both"], ref["ss"], ref["tt"])
    are, prec, rec = adapted_rand_error(truth, seg)  # skimage: truth label 0 ignored, seg 0 a segment
    n = ref["n"]
    # skimage counts pairs of distinct pixels: sum n_ij (n_ij - 1) etc.
    distinct = 2 * (ref["both"] - n) / (ref["ss"] + ref["tt"] - 2 * n)
    assert 1 - are == pytest.approx(distinct, rel=1e-12)
    # the same table with every count x M: skimage's pairs of distinct pixels tend to pairs with replacement
    table = contingency_table_scaled(truth, seg, 10**6)
    are_m, prec_m, rec_m = adapted_rand_error(table=table)
    ours = rand_scores(n_ij, s_i, t_j)
    assert ours["v_rand"] == pytest.approx(1 - are_m, rel=1e-5)
    # skimage 0.26 returns (split, merge) as (precision, recall) although its docstring says the reverse: compare as a set
    assert sorted([prec_m, rec_m]) == pytest.approx(sorted([ours["rand_split"], ours["rand_merge"]]), rel=1e-5)
    assert ours["v_rand"] == pytest.approx(2 * ref["both"] / (ref["ss"] + ref["tt"]), rel=1e-12)
    assert ours["rand_split"] == pytest.approx(ref["both"] / ref["tt"]) and ours["rand_merge"] == pytest.approx(ref["both"] / ref["ss"])


def contingency_table_scaled(truth, seg, m):
    from skimage.metrics import contingency_table

    return contingency_table(truth, seg, ignore_labels=(0,), normalize=False, sparse_type="array") * m


@pytest.mark.parametrize("trial", range(5))
def test_v_info_matches_an_entropy_recount_and_skimage_variation_of_information(trial):
    seg, truth = _random_pair()
    ref = _counter_scores(seg, truth)
    ours = info_scores(*contingency(seg, truth))
    assert ours["h_s"] == pytest.approx(ref["h_s"], abs=1e-10) and ours["h_t"] == pytest.approx(ref["h_t"], abs=1e-10)
    assert ours["mutual_info"] == pytest.approx(ref["mi"], abs=1e-10)
    assert ours["info_split"] == pytest.approx(ref["mi"] / ref["h_s"]) and ours["info_merge"] == pytest.approx(ref["mi"] / ref["h_t"])
    assert ours["v_info"] == pytest.approx(2 * ref["mi"] / (ref["h_s"] + ref["h_t"]))
    # skimage: the two conditional entropies (bits) over the pixels where truth != 0, VI = their sum
    # (compared as a set: which comes first differs from its docstring's order in skimage 0.26)
    conditional = variation_of_information(truth, seg, ignore_labels=(0,))
    h_s_given_t, h_t_given_s = ours["h_s"] - ours["mutual_info"], ours["h_t"] - ours["mutual_info"]
    assert sorted(conditional) == pytest.approx(sorted([h_s_given_t, h_t_given_s]), abs=1e-9)
    assert conditional.sum() == pytest.approx(ours["h_s"] + ours["h_t"] - 2 * ours["mutual_info"], abs=1e-9)


def test_perfect_segmentation_scores_one_and_zero_pixel_error():
    membrane = np.zeros((20, 20), bool)
    membrane[:, 7] = membrane[12, :] = True  # four cells
    (r,) = em_scores(membrane.astype(np.float32), membrane)
    assert r["pixel_error"] == 0.0 and r["segments"] == r["truth_segments"] == 4
    for key in ("v_rand", "rand_split", "rand_merge", "v_info", "info_split", "info_merge"):
        assert r[key] == pytest.approx(1.0)


def test_hand_made_split_and_merge():
    truth = np.array([[1, 1, 1, 1, 2, 2, 2, 2]])
    split = np.array([[1, 1, 2, 2, 3, 3, 3, 3]])  # truth cell 1 cut in two
    # n_ij = 2, 2, 4: sum n^2 = 24, sum s^2 = 24, sum t^2 = 32; H(S) = 1.5 bits, H(T) = 1 bit, I = 1 bit
    r = segmentation_scores(split, truth)
    assert (r["rand_split"], r["rand_merge"], r["v_rand"]) == pytest.approx((24 / 32, 1.0, 48 / 56))
    assert (r["info_split"], r["info_merge"], r["v_info"]) == pytest.approx((1 / 1.5, 1.0, 2 / 2.5))
    m = segmentation_scores(truth, split)  # the same pair the other way round: a merge of two truth cells
    assert (m["rand_split"], m["rand_merge"], m["v_rand"]) == pytest.approx((1.0, 24 / 32, 48 / 56))
    assert (m["info_split"], m["info_merge"], m["v_info"]) == pytest.approx((1.0, 1 / 1.5, 2 / 2.5))
    # one truth cell cut in two, nothing else: H(T) = 0 (no merge possible), I = 0
    one = segmentation_scores(np.array([[1, 1, 2, 2]]), np.array([[1, 1, 1, 1]]))
    assert (one["rand_split"], one["rand_merge"], one["v_rand"]) == pytest.approx((8 / 16, 1.0, 16 / 24))
    assert (one["info_split"], one["info_merge"], one["v_info"]) == pytest.approx((0.0, 1.0, 0.0))


def test_membrane_map_split_by_a_false_membrane_and_the_predicted_membrane_convention():
    truth = np.zeros((3, 9), bool)
    truth[:, 4] = True  # two truth cells: columns 0-3 and 5-8 (12 pixels each)
    prob = truth.astype(np.float32)
    prob[:, 2] = 0.9  # a false membrane in the left cell: S = cols 0-1 (6), col 3 (3), cols 5-8 (12), label 0 = col 2 (3)
    (r,) = em_scores(prob, truth)
    assert r["pixel_error"] == pytest.approx(3 / 27) and (r["segments"], r["truth_segments"]) == (3, 2)
    # segment: n_ij = 6, 3, 3, 12 -> sum n^2 = sum s^2 = 198, sum t^2 = 288
    assert (r["rand_split"], r["rand_merge"], r["v_rand"]) == pytest.approx((198 / 288, 1.0, 396 / 486))
    # H(S) = 1.75 bits, H(T) = 1 bit, S determines T so I = 1 bit
    assert (r["info_split"], r["info_merge"], r["v_info"]) == pytest.approx((1 / 1.75, 1.0, 2 / 2.75))
    (single,) = em_scores(prob, truth, background="singletons")  # col 2 = three one-pixel segments: sum n^2 = 192
    assert single["rand_split"] == pytest.approx(192 / 288) and single["rand_merge"] == pytest.approx(1.0)
    # thresholds: at 0.95 the false membrane is cell again
    low, high = em_scores(prob, truth, thresholds=(0.5, 0.95))
    assert low == r and high["v_rand"] == pytest.approx(1.0) and high["pixel_error"] == 0.0


def test_connectivity_4_keeps_diagonal_neighbours_apart_and_8_joins_them():
    truth = np.ones((4, 4), bool)
    truth[0, 0] = truth[1, 1] = False  # two cell pixels touching by a corner (plus the rest)
    truth[0, 1] = truth[1, 0] = True
    four, eight = em_scores(truth.astype(float), truth)[0], em_scores(truth.astype(float), truth, connectivity=8)[0]
    assert (four["truth_segments"], eight["truth_segments"]) == (2, 1)


def test_pixel_error_is_one_minus_accuracy_and_ignored_pixels_count_nowhere():
    prob = rng.random((30, 30))
    truth = rng.random((30, 30)) < 0.3
    valid = rng.random((30, 30)) < 0.8
    r = em_scores(prob, truth, thresholds=(0.3, 0.5), valid=valid)
    for row, t in zip(r, (0.3, 0.5), strict=True):
        assert row["pixel_error"] == pytest.approx(np.mean(((prob > t) != truth)[valid]))


def test_mean_over_slices_averages_each_slice_and_leaves_out_slices_without_foreground():
    truth = np.zeros((8, 8), bool)
    truth[:, 3] = True
    a = em_scores(truth.astype(float), truth)
    false_membrane = np.zeros((8, 8))
    false_membrane[:, 5] = 0.9  # membrane missed at column 3, a false one at column 5
    b = em_scores(false_membrane, truth)
    empty = em_scores(np.zeros((8, 8)), np.ones((8, 8), bool))
    assert math.isnan(empty[0]["v_rand"]) and math.isnan(empty[0]["v_info"]) and empty[0]["pixel_error"] == 1.0
    (mean,) = mean_over_slices([a, b, empty])
    assert mean["v_rand"] == pytest.approx((a[0]["v_rand"] + b[0]["v_rand"]) / 2)
    assert mean["pixel_error"] == pytest.approx((a[0]["pixel_error"] + b[0]["pixel_error"] + 1.0) / 3)


def test_membrane_class_auto_true_false():
    assert membrane_class("isbi2012", "isbi2012", {"positive": "membrane"}, ["cell", "membrane"], "auto") == 1
    assert membrane_class("isbi2012", "isbi2012", {}, ["cell", "membrane"], "auto") == 1
    assert membrane_class("isbi2012", "isbi2012", {"positive": "cell"}, ["membrane", "cell"], "auto") == 0
    assert membrane_class("folder", "mine", {}, ["background", "membrane"], "auto") is None
    assert membrane_class("folder", "mine", {}, ["background", "membrane"], True) == 1
    assert membrane_class("isbi2012", "isbi2012", {}, ["cell", "membrane"], False) is None
    with pytest.raises(SegkitError, match="no membrane class"):
        membrane_class("folder", "mine", {}, ["background", "cell"], True)
    assert check_thresholds([0.3, "0.5"]) == [0.3, 0.5]
    for bad in ([], [1.5], ["x"]):
        with pytest.raises(SegkitError, match="em_thresholds"):
            check_thresholds(bad)
    with pytest.raises(SegkitError, match="expected auto, true or false"):
        membrane_class("folder", "mine", {}, ["background", "cell"], "sometimes")


# ---------------------------------------------------------------------------------------------- segkit.eval
def _isbi_folder(root: Path, n: int = 6, size: int = 32) -> None:
    """PNG pairs in the isbi2012 layout: a membrane grid (label 0) on cell interior (255), dark membranes in the image."""
    (root / "train" / "image").mkdir(parents=True)
    (root / "train" / "label").mkdir(parents=True)
    for i in range(n):
        label = np.full((size, size), 255, np.uint8)
        label[(np.arange(size) + i) % 11 == 0, :] = 0
        label[:, (np.arange(size) + 2 * i) % 13 == 0] = 0
        image = np.where(label == 0, 40, 200).astype(np.int16) + rng.integers(-20, 20, (size, size))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "train" / "image" / f"{i}.png")
        Image.fromarray(label).save(root / "train" / "label" / f"{i}.png")


def test_eval_on_an_isbi2012_run_reports_em_scores_per_slice_and_their_mean(tmp_path):
    from segkit.evaluation.evaluate import eval_data, run_eval
    from segkit.inference.predictor import predict_probs
    from segkit.training.fit import train
    from segkit.training.module import SegModule

    root = tmp_path / "isbi"
    _isbi_folder(root)
    cfg = compose_cfg(tmp_path, ["experiment=isbi2012_unet", f"data.root={root}", "debug=fast", "data.crop_size=32",
                                 "data.format_options.val_slices=[3,4]", "data.format_options.test_slices=[5]",
                                 "model.base_width=4", "model.depth=2", "callbacks.progress_bar=null"])
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
    out = tmp_path / "eval_val"
    ecfg = compose_cfg(tmp_path, [f"ckpt_path={ckpt}", "split=val", f"paths.output_dir={out}", "em_thresholds=[0.3,0.5]"], config_name="eval")
    result = run_eval(ecfg)
    saved = json.loads((out / "metrics.json").read_text())
    em = saved["metrics"]["em_mean_over_slices"]
    assert saved["em"]["split"] == "val" and saved["em"]["thresholds"] == [0.3, 0.5] and saved["em"]["membrane_class"] == 1
    assert {"em/v_rand@0.5", "em/v_info@0.5", "em/pixel_error@0.5", "em/rand_split@0.3", "em/info_merge@0.3"} <= set(em)
    rows = list(csv.DictReader((out / "em_per_slice.csv").open()))
    assert [(r["image"], float(r["threshold"])) for r in rows] == [("3", 0.3), ("3", 0.5), ("4", 0.3), ("4", 0.5)]
    report = (out / "eval_report.md").read_text()
    assert "EM challenge scores" in report and "mean over slices" in report and "V_rand" in report
    # recount: the checkpoint's membrane probability through em_scores, slice by slice, then the mean
    module = SegModule.load_from_checkpoint(ckpt, weights_only=True, map_location="cpu").eval()
    dm, _ = eval_data(ecfg, ckpt)
    dm.prepare()
    images, masks, stems = dm.arrays("val")
    per_slice = []
    for image, mask in zip(images, masks, strict=True):
        prob = predict_probs(module, image)[1].numpy()
        per_slice.append(em_scores(prob, mask == 1, (0.3, 0.5)))
    for m in mean_over_slices(per_slice):
        for key in ("pixel_error", "v_rand", "v_info"):
            want = m[key]
            got = em[f"em/{key}@{m['threshold']:g}"]
            assert (got is None and math.isnan(want)) or got == pytest.approx(want, abs=1e-6)
    # at 0.5 the thresholded membrane map is the argmax: pixel error = 1 - pixel accuracy of the mean over images
    assert em["em/pixel_error@0.5"] == pytest.approx(1 - result["mean_over_images"]["pixel_acc"], abs=1e-6)
    # em_scores=false turns it off
    off = run_eval(compose_cfg(tmp_path, [f"ckpt_path={ckpt}", "split=test", f"paths.output_dir={tmp_path / 'off'}", "em_scores=false"], config_name="eval"))
    assert off["em"] is None and "em" not in json.loads((tmp_path / "off" / "metrics.json").read_text())
