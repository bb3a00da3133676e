"""The rare-class losses (``loss=focal|tversky|lovasz``) against formulas computed here, pixel by pixel."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from segkit.errors import SegkitError
from segkit.training.losses import CrossEntropy, SoftDiceLoss, build_loss


def batch(seed: int = 0, ignore: bool = True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 5, 4, generator=g) * 2
    target = torch.randint(0, 3, (2, 5, 4), generator=g)
    if ignore:
        target[0, 0, :2] = 255
    return logits, target


def test_focal_equals_its_formula_and_is_cross_entropy_at_gamma_0():
    logits, target = batch()
    weights = [0.5, 1.0, 4.0]
    p = torch.softmax(logits.double(), 1).numpy()
    t = target.numpy()
    num = den = 0.0
    for n, y, x in itertools.product(range(2), range(5), range(4)):
        c = t[n, y, x]
        if c == 255:
            continue
        pt = p[n, c, y, x]
        num += weights[c] * (1 - pt) ** 2 * -np.log(pt)
        den += weights[c]
    loss = build_loss("focal", 3, class_weights=weights, gamma=2.0)
    assert float(loss(logits, target)) == pytest.approx(num / den, rel=1e-5)
    ce = CrossEntropy(255, weights)
    assert float(build_loss("focal", 3, class_weights=weights, gamma=0.0)(logits, target)) == pytest.approx(float(ce(logits, target)), rel=1e-5)


def test_tversky_equals_its_formula_and_is_dice_at_one_half():
    logits, target = batch(1)
    p = torch.softmax(logits.double(), 1).numpy()
    t = target.numpy()
    valid = t != 255
    scores = []
    for c in range(3):
        pc, tc = p[:, c][valid], (t[valid] == c).astype(float)
        tp, fp, fn = (pc * tc).sum(), (pc * (1 - tc)).sum(), ((1 - pc) * tc).sum()
        scores.append((tp + 1.0) / (tp + 0.3 * fp + 0.7 * fn + 1.0))
    assert float(build_loss("tversky", 3, alpha=0.3, beta=0.7)(logits, target)) == pytest.approx(1 - np.mean(scores), rel=1e-5)
    half = build_loss("tversky", 3, alpha=0.5, beta=0.5, smooth=0.5)(logits, target)  # (TP + s/2) / (TP + (FP + FN)/2 + s/2)
    assert float(half) == pytest.approx(float(SoftDiceLoss(3, 255, None, 1.0)(logits, target)), rel=1e-5)


def lovasz_reference(p: np.ndarray, t: np.ndarray) -> float:
    """Berman et al. 2018, Alg. 1: per present class, errors sorted descending, the Jaccard loss's increments."""
    losses = []
    for c in range(p.shape[1]):
        fg = (t == c).astype(float)
        if fg.sum() == 0:
            continue
        err = np.abs(fg - p[:, c])
        order = np.argsort(-err, kind="stable")
        e, g = err[order], fg[order]
        gts = g.sum()
        inter = gts - np.cumsum(g)
        union = gts + np.cumsum(1 - g)
        jac = 1 - inter / union
        grad = np.concatenate([[jac[0]], np.diff(jac)])
        losses.append(float(e @ grad))
    return float(np.mean(losses))


def test_lovasz_equals_the_papers_algorithm_over_present_classes():
    logits, target = batch(2)
    target[target == 1] = 2  # class 1 absent from the batch: left out, not counted as perfect
    p = torch.softmax(logits.double(), 1).permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    t = target.reshape(-1).numpy()
    keep = t != 255
    expected = lovasz_reference(p[keep], t[keep])
    assert float(build_loss("lovasz", 3)(logits, target)) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(SegkitError, match="loss=lovasz, which has no class weights"):
        build_loss("lovasz", 3, class_weights=[1.0, 1.0, 2.0])


@pytest.mark.parametrize("name", ["focal", "tversky", "lovasz"])
def test_each_rare_class_loss_has_a_gradient_that_lowers_it(name):
    logits, target = batch(3, ignore=False)
    logits.requires_grad_(True)
    loss_fn = build_loss(name, 3)
    before = loss_fn(logits, target)
    before.backward()
    with torch.no_grad():
        after = loss_fn(logits - 0.5 * logits.grad, target)
    assert torch.isfinite(before) and float(after) < float(before.detach())
