import numpy as np
import pytest

from segkit.data.stats import class_weights, compute_stats


def _set():
    # image A: 4x4, classes 0 (12 px) and 1 (4 px); image B: 2x4, classes 0 (4 px) and 2 (2 px), 2 ignored
    ma = np.zeros((4, 4), np.uint8)
    ma[:2, :2] = 1
    mb = np.array([[0, 0, 2, 2], [0, 0, 255, 255]], np.uint8)
    ia = np.full((4, 4, 3), 10, np.uint8)
    ib = np.zeros((2, 4, 3), np.uint8)
    ib[..., 0] = 250
    return [ia, ib], [ma, mb]


def test_stats_are_pooled_over_pixels():
    images, masks = _set()
    s = compute_stats(images, masks, 3, 255)
    assert s.class_pixels == [16, 4, 2]
    # present_pixels: labelled pixels of the images where the class occurs
    assert s.present_pixels == [16 + 6, 16, 6]
    # channel 0: 16 px of 10 and 8 px of 250
    mean0 = (16 * 10 + 8 * 250) / 24
    std0 = np.sqrt((16 * 10**2 + 8 * 250**2) / 24 - mean0**2)
    assert s.mean[0] == pytest.approx(mean0 / 255)
    assert s.std[0] == pytest.approx(std0 / 255)
    assert s.mean[1] == pytest.approx(160 / 24 / 255)


def test_auto_weights_against_hand_values():
    images, masks = _set()
    s = compute_stats(images, masks, 3, 255)
    f = np.array([16, 4, 2]) / 22
    # one_minus_frequency (darkfield write-up)
    assert class_weights(s, "one_minus_frequency") == pytest.approx(list(1 - f))
    # inverse, scaled to average 1
    inv = 1 / f
    assert class_weights(s, "inverse") == pytest.approx(list(inv * 3 / inv.sum()))
    # median frequency (SegNet): f_c = pixels_c / pixels of images containing c
    fm = np.array([16 / 22, 4 / 16, 2 / 6])
    assert class_weights(s, "median_frequency") == pytest.approx(list(np.median(fm) / fm))


def test_absent_class_gets_the_largest_weight():
    images, masks = _set()
    s = compute_stats(images, masks, 4, 255)
    w = class_weights(s, "median_frequency")
    assert w[3] == pytest.approx(max(w[:3]))
