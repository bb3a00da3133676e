"""Segmentation metrics from a confusion matrix pooled over the dataset.

Aggregation: every pixel of every evaluated image is counted once in one ``C x C`` confusion matrix
(rows = truth, columns = prediction; ``ignore_index`` pixels are left out); per-class scores are
computed from its totals ("pooled over the dataset", smp's ``micro`` per class).

Absent-class policy: a class with no pixels in the truth AND none in the prediction has an undefined
IoU / Dice / precision / recall. It is reported as NaN and left out of ``miou`` and ``mdice``
(``nanmean``); it is never counted as a perfect 1 or a failed 0.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

ABSENT_CLASS_POLICY = (
    "a class absent from both truth and prediction has undefined scores: reported as NaN and left out of the means"
)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> torch.Tensor:
    """``[C, C]`` int64 counts, rows = truth, columns = prediction, for integer maps of equal shape."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target >= 0) & (target < num_classes)
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        keep &= target != ignore_index
    # Left-out pixels go to one extra bin instead of being compacted out by boolean indexing: the same
    # counts, about 5x faster (it runs on every training step).
    k2 = num_classes * num_classes
    idx = torch.where(keep, target * num_classes + pred.clamp(0, num_classes - 1), k2)
    return torch.bincount(idx, minlength=k2 + 1)[:k2].reshape(num_classes, num_classes)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, float("nan")))


def scores(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class ``iou``, ``dice``, ``precision``, ``recall`` (= per-class accuracy) ``[C]`` and the scalars
    ``miou``, ``mdice``, ``pixel_acc`` from a confusion matrix (see the module doc for the policy)."""
    cm = cm.double()
    tp = cm.diagonal()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    iou = _ratio(tp, tp + fp + fn)
    dice = _ratio(2 * tp, 2 * tp + fp + fn)
    total = cm.sum()
    return {
        "iou": iou,
        "dice": dice,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "miou": iou.nanmean(),
        "mdice": dice.nanmean(),
        "pixel_acc": tp.sum() / total if total > 0 else torch.tensor(float("nan"), dtype=torch.float64),
    }


def flat_scores(cm: torch.Tensor, class_names: list[str], prefix: str) -> dict[str, float]:
    """``{"<prefix>/miou": .., "<prefix>/iou/<class>": .., ...}`` as plain floats."""
    s = scores(cm)
    out = {f"{prefix}/{k}": float(s[k]) for k in ("miou", "mdice", "pixel_acc")}
    for key in ("iou", "dice", "precision", "recall"):
        for name, value in zip(class_names, s[key].tolist(), strict=True):
            out[f"{prefix}/{key}/{name}"] = float(value)
    return out


class ConfusionMatrix(Metric):
    """A dataset-pooled confusion matrix as a torchmetrics state: summed over batches and, under DDP,
    over processes (no Python lists of step outputs)."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("cm", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.cm += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def compute(self) -> torch.Tensor:
        return self.cm
