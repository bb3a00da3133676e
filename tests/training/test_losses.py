import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segkit.errors import SegkitError
from segkit.training.losses import build_loss


def _data(seed=0, n=2, c=3, h=6, w=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g)
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[0, 0, :3] = 255
    return logits, target


def test_weighted_ce_matches_hand_computation():
    logits, target = _data()
    w = [0.5, 1.0, 3.0]
    loss = build_loss("weighted_ce", num_classes=3, ignore_index=255, class_weights=w)(logits, target)
    # reference: sum_i w_{t_i} * -log p_i(t_i) / sum_i w_{t_i} over non-ignored pixels
    logp = logits.log_softmax(1).permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    t = target.reshape(-1).numpy()
    keep = t != 255
    wt = np.array(w)[t[keep]]
    ref = -(wt * logp[keep, t[keep]]).sum() / wt.sum()
    assert loss.item() == pytest.approx(ref, rel=1e-5)


def test_ce_ignores_pixels():
    logits, target = _data()
    loss = build_loss("ce", num_classes=3, ignore_index=255)
    changed = logits.clone()
    changed[0, :, 0, :3] += 100.0  # only ignored pixels change
    assert loss(logits, target).item() == pytest.approx(loss(changed, target).item())
    assert loss(logits, target).item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=255).item())


def test_soft_dice_matches_numpy():
    logits, target = _data(1)
    loss = build_loss("dice", num_classes=3, ignore_index=255, smooth=1.0)(logits, target)
    p = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    t = target.reshape(-1).numpy()
    keep = t != 255
    p, t = p[keep], t[keep]
    onehot = np.eye(3)[t]
    dice = (2 * (p * onehot).sum(0) + 1) / (p.sum(0) + onehot.sum(0) + 1)
    assert loss.item() == pytest.approx(1 - dice.mean(), rel=1e-5)


def test_dice_is_near_zero_for_a_perfect_prediction():
    target = torch.randint(0, 3, (2, 16, 16))
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert build_loss("dice", num_classes=3)(logits, target).item() < 1e-3


def test_ce_dice_is_the_weighted_sum():
    logits, target = _data(2)
    ce = build_loss("ce", num_classes=3)(logits, target)
    dice = build_loss("dice", num_classes=3)(logits, target)
    combo = build_loss("ce_dice", num_classes=3, ce_lambda=0.3, dice_lambda=2.0)(logits, target)
    assert combo.item() == pytest.approx(0.3 * ce.item() + 2.0 * dice.item(), rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, words",
    [({"name": "hinge"}, "loss.name"), ({"name": "ce", "class_weights": [1, 2]}, "loss.class_weights"),
     ({"name": "weighted_ce"}, "loss.class_weights")],
)
def test_bad_loss_config_names_the_key(kwargs, words):
    with pytest.raises(SegkitError, match=words):
        build_loss(num_classes=3, **kwargs)
