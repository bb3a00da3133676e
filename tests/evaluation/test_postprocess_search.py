"""The post-processing search: what it scores equals what predict applies, it finds the knob a
hand-built case needs (pixel, count and size-distribution targets), and it stops at its time limit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from segkit.errors import SegkitError
from segkit.evaluation.postprocess_search import Scorer, parse_metric, search
from segkit.inference.postprocess import postprocess

NAMES = ["background", "cell", "edge"]


def _probs(labels: np.ndarray, confidence: np.ndarray, k: int = 3) -> np.ndarray:
    """Probabilities whose argmax is ``labels`` with ``confidence`` on it, the rest spread evenly."""
    rest = (1.0 - confidence) / (k - 1)
    p = np.repeat(rest[None], k, 0).astype(np.float32)
    for c in range(k):
        p[c][labels == c] = confidence[labels == c]
    return p


def _miou(pred: np.ndarray, true: np.ndarray, k: int) -> float:
    ious = []
    for c in range(k):
        inter = np.sum((pred == c) & (true == c))
        union = np.sum((pred == c) | (true == c))
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


def test_scored_labels_equal_what_postprocess_applies():
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet([1, 1, 1], size=(40, 50)).transpose(2, 0, 1).astype(np.float32) for _ in range(3)]
    masks = [rng.integers(0, 3, (40, 50)) for _ in range(3)]
    scorer = Scorer(probs, masks, NAMES, 255, "miou")
    configs = [{}, {"thresholds": {1: 0.6}}, {"median_size": 5, "thresholds": {1: 0.4, 2: 0.5}},
               {"median_size": 3, "min_object_size": 4, "object_classes": [1]},
               {"median_size": 5, "min_object_size": 6, "object_classes": [1, 2], "fill_holes": True}]
    for post in configs * 2:  # twice: the second time from the median cache
        for got, p in zip(scorer.labels(post), probs, strict=True):
            np.testing.assert_array_equal(got, postprocess(p, post))
    assert set(scorer.median_seconds) == {3, 5}  # each window computed once


def test_pixel_score_is_the_pooled_miou_and_ignored_pixels_stay_out():
    rng = np.random.default_rng(1)
    probs = [rng.dirichlet([1, 1, 1], size=(30, 30)).transpose(2, 0, 1).astype(np.float32) for _ in range(2)]
    masks = [rng.integers(0, 3, (30, 30)) for _ in range(2)]
    masks[0][:5] = 255
    scorer = Scorer(probs, masks, NAMES, 255, "miou")
    pred = np.concatenate([p.argmax(0)[m != 255] for p, m in zip(probs, masks, strict=True)])
    true = np.concatenate([m[m != 255] for m in masks])
    assert scorer.value({}) == pytest.approx(_miou(pred, true, 3))


def test_a_threshold_that_removes_the_false_positives_is_found():
    true = np.zeros((32, 32), np.int64)
    true[4:12, 4:12] = 1
    pred = true.copy()
    pred[20:26, 20:26] = 1  # a false positive, predicted with lower confidence
    conf = np.full(true.shape, 0.9, np.float32)
    conf[20:26, 20:26] = 0.62
    probs = [_probs(pred, conf)]
    best, before, after, trials, _ = search(probs, [true], NAMES, [1], 255, "iou/cell",
                                            {"thresholds": [0.5, 0.7, 0.9], "median_size": [], "min_object_size": []})
    assert before == pytest.approx(64 / (64 + 36))  # hand count: 64 true pixels, 36 false ones
    assert best["thresholds"] == {1: 0.7} and after == pytest.approx(1.0)  # 0.9 would drop everything
    # argmax, round one (0.7 changes the choice), round two from there (nothing more), then the search ends
    assert len(trials) == 1 + 3 + 3


def test_small_specks_are_removed_for_the_object_count():
    true = np.zeros((40, 40), np.int64)
    true[5:15, 5:15] = 1
    true[22:32, 22:32] = 1
    pred = true.copy()
    for y, x in [(2, 30), (30, 3), (36, 36)]:  # three 2x2 specks: 5 objects predicted against 2
        pred[y:y + 2, x:x + 2] = 1
    probs = [_probs(pred, np.full(pred.shape, 0.9, np.float32))]
    best, before, after, _, scorer = search(probs, [true], NAMES, [1], 255, "count_error/cell",
                                            {"thresholds": [], "median_size": [], "min_object_size": [3, 10, 200]})
    assert not scorer.higher_better
    assert before == pytest.approx(abs(5 - 2) / 2) and after == 0.0
    assert best["min_object_size"] == 10  # 3 keeps the specks (4 px); 200 would remove the cells too


def _ks_d(a: np.ndarray, b: np.ndarray) -> float:
    """The largest distance between the two empirical CDFs, counted by hand."""
    xs = np.union1d(a, b)
    fa = np.array([np.mean(a <= x) for x in xs])
    fb = np.array([np.mean(b <= x) for x in xs])
    return float(np.max(np.abs(fa - fb)))


def test_the_size_distribution_target_uses_the_ks_distance_of_interior_objects():
    true = np.zeros((60, 60), np.int64)
    for i, (y, x) in enumerate(itertools.product([5, 25, 45], [5, 25])):
        s = 6 + i  # squares of side 6..11
        true[y:y + s, x:x + s] = 1
    true[0:4, 50:56] = 1  # touches the border: left out of the sizes
    pred = true.copy()
    pred[50:52, 50:52] = 1  # a 4-pixel speck inside
    probs = [_probs(pred, np.full(pred.shape, 0.9, np.float32))]
    scorer = Scorer(probs, [true], NAMES, 255, "ks/cell")
    true_areas = np.array([(6 + i) ** 2 for i in range(6)])
    assert np.array_equal(np.sort(scorer.true_areas), true_areas)
    assert scorer.value({}) == pytest.approx(_ks_d(np.append(true_areas, 4), true_areas))
    best, before, after, _, _ = search(probs, [true], NAMES, [1], 255, "ks/cell",
                                       {"thresholds": [], "median_size": [], "min_object_size": [10]})
    assert after == 0.0 and best["min_object_size"] == 10 and before > after


def test_the_search_stops_at_its_time_limit_and_says_so():
    rng = np.random.default_rng(2)
    probs = [rng.dirichlet([1, 1, 1], size=(20, 20)).transpose(2, 0, 1).astype(np.float32)]
    masks = [rng.integers(0, 3, (20, 20))]
    ticks = iter(range(1000))
    best, _, _, trials, _ = search(probs, masks, NAMES, [1, 2], 255, "miou",
                                   {"thresholds": [0.5, 0.6, 0.7, 0.8], "median_size": [3], "min_object_size": [5]},
                                   max_seconds=5.5, clock=lambda: float(next(ticks)))
    assert "max_seconds 5.5 reached" in trials[-1]["stopped"]
    assert len(trials) < 1 + 2 * (8 + 2)  # cut before the grid's end


def test_unknown_metrics_and_classes_are_one_sentence():
    assert parse_metric("ks/cell", NAMES) == ("ks", 1, False)
    assert parse_metric("iou/edge", NAMES)[2] is True
    with pytest.raises(SegkitError, match="'nucleus' is not a class"):
        parse_metric("count_error/nucleus", NAMES)
    with pytest.raises(SegkitError, match="metric is 'accuracy'; expected miou"):
        parse_metric("accuracy", NAMES)


def test_the_fold_check_scores_each_fold_with_a_choice_made_without_it():
    from segkit.evaluation.postprocess_search import fold_check

    true = np.zeros((32, 32), np.int64)
    true[4:12, 4:12] = 1
    probs, masks = [], []
    for i in range(4):
        pred = true.copy()
        conf = np.full(true.shape, 0.95, np.float32)
        if i < 3:  # a false positive at low confidence: a threshold of 0.7 removes it
            pred[20:26, 20:26] = 1
            conf[20:26, 20:26] = 0.62
        else:  # the true object itself at low confidence: the same threshold removes it
            conf[4:12, 4:12] = 0.62
        probs.append(_probs(pred, conf))
        masks.append(true)
    grid = {"thresholds": [0.7], "median_size": [], "min_object_size": []}
    check = fold_check(probs, masks, NAMES, [1], 255, "iou/cell", grid, folds=4)
    rows = {r["held_out"][0]: r for r in check["rows"]}
    assert sorted(rows) == [0, 1, 2, 3] and all(len(r["held_out"]) == 1 for r in rows.values())
    # image 3 held out: tuned on three images with a false positive each, 0.7 is chosen and removes image 3's object
    assert rows[3]["postprocess"]["thresholds"] == {1: 0.7}
    assert rows[3]["before"] == pytest.approx(1.0) and rows[3]["after"] == pytest.approx(0.0)
    # image 0 held out: on images 1, 2, 3 the threshold scores 128/192 against 192/264 for the argmax: not chosen
    assert "thresholds" not in rows[0]["postprocess"]
    assert rows[0]["before"] == rows[0]["after"] == pytest.approx(64 / 100)
    assert check["mean_before"] == pytest.approx((3 * 0.64 + 1.0) / 4)
    assert check["mean_after"] == pytest.approx((3 * 0.64 + 0.0) / 4)
    assert rows[0]["iou/cell"] == [pytest.approx(0.64), pytest.approx(0.64)]
    with pytest.raises(SegkitError, match=r"check_folds is 5; expected 0 \(off\) or 2..4"):
        fold_check(probs, masks, NAMES, [1], 255, "iou/cell", grid, folds=5)
