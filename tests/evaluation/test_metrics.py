import math

import numpy as np
import pytest
import torch

from segkit.evaluation.metrics import ConfusionMatrix, confusion_matrix, flat_scores, scores


def numpy_reference(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int):
    """Per-class IoU / Dice / precision / recall by direct set counting, NaN when undefined."""
    keep = target != ignore
    p, t = pred[keep], target[keep]
    out = {"iou": [], "dice": [], "precision": [], "recall": []}
    for c in range(num_classes):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        ps, ts = np.sum(p == c), np.sum(t == c)
        out["iou"].append(inter / union if union else math.nan)
        out["dice"].append(2 * inter / (ps + ts) if ps + ts else math.nan)
        out["precision"].append(inter / ps if ps else math.nan)
        out["recall"].append(inter / ts if ts else math.nan)
    out["pixel_acc"] = np.mean(p == t)
    return out


def test_scores_match_numpy_on_hand_made_masks():
    target = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 0, 0, 0]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [2, 0, 2, 1], [2, 2, 0, 0]])
    cm = confusion_matrix(torch.tensor(pred), torch.tensor(target), 4, 255)
    # hand count: 14 labelled pixels
    assert int(cm.sum()) == 14
    s = scores(cm)
    ref = numpy_reference(pred, target, 4, 255)
    for key in ("iou", "dice", "precision", "recall"):
        np.testing.assert_allclose(s[key].numpy(), np.array(ref[key]), equal_nan=True)
    # class 0: truth 7 px, predicted 7 px, 5 overlap -> IoU 5/9
    assert s["iou"][0].item() == pytest.approx(5 / 9)
    assert s["pixel_acc"].item() == pytest.approx(ref["pixel_acc"]) == pytest.approx(10 / 14)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    # class 3 appears in neither truth nor prediction
    target = torch.tensor([[0, 1], [2, 2]])
    pred = torch.tensor([[0, 1], [2, 1]])
    s = scores(confusion_matrix(pred, target, 4))
    assert math.isnan(s["iou"][3].item()) and math.isnan(s["dice"][3].item())
    assert s["miou"].item() == pytest.approx((1 + 0.5 + 0.5) / 3)
    # a class predicted but absent from the truth is a 0, not NaN
    s2 = scores(confusion_matrix(torch.tensor([[3, 1], [2, 2]]), target, 4))
    assert s2["iou"][3].item() == 0.0


def test_metric_pools_over_batches_like_one_big_matrix():
    g = torch.Generator().manual_seed(0)
    preds = [torch.randint(0, 3, (2, 8, 8), generator=g) for _ in range(3)]
    targets = [torch.randint(0, 3, (2, 8, 8), generator=g) for _ in range(3)]
    metric = ConfusionMatrix(3, ignore_index=255)
    for p, t in zip(preds, targets, strict=True):
        metric.update(p, t)
    whole = confusion_matrix(torch.cat(preds), torch.cat(targets), 3)
    assert torch.equal(metric.compute(), whole)


def test_flat_scores_names():
    cm = torch.tensor([[5, 1], [2, 4]])
    flat = flat_scores(cm, ["bg", "cell"], "val")
    assert flat["val/iou/cell"] == pytest.approx(4 / 7)
    assert flat["val/dice/bg"] == pytest.approx(10 / 13)
    assert flat["val/miou"] == pytest.approx((5 / 8 + 4 / 7) / 2)
    assert {"val/precision/bg", "val/recall/cell", "val/pixel_acc", "val/mdice"} <= set(flat)
