"""Losses for multiclass segmentation. Every loss takes logits ``[N, C, H, W]`` and integer targets
``[N, H, W]``; pixels equal to ``ignore_index`` contribute nothing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.errors import SegkitError
from segkit.registry import LOSS_NAMES


def masked_probs(logits: torch.Tensor, target: torch.Tensor, num_classes: int,
                 ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax probabilities and the one-hot target ``[N, C, H, W]``, both zero at ignored pixels, and the
    valid-pixel mask ``[N, 1, H, W]`` (the overlap losses' common start)."""
    probs = logits.float().softmax(dim=1)
    valid = target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(t.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    v = valid.unsqueeze(1).to(probs.dtype)
    return probs * v, onehot * v, v


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's weights for ``n`` outputs, full resolution first: ``1 / 2**i``, normalised to sum 1."""
    w = [0.5**i for i in range(n)]
    return [v / sum(w) for v in w]


def deep_supervision_loss(loss, outputs: Sequence[torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_i w_i loss(outputs[i], target at outputs[i]'s size)``: each coarser output is scored against the
    mask subsampled to its size (every k-th pixel of every k-th row at stride k, so no label is blended into
    another and ignored pixels stay ignored), weighted as :func:`deep_supervision_weights`. Returns the weighted
    sum (what is optimised) and the full-resolution term alone (comparable with a validation loss)."""
    total, first = outputs[0].new_zeros((), dtype=torch.float32), None
    for w, out in zip(deep_supervision_weights(len(outputs)), outputs, strict=True):
        t = target
        if out.shape[-2:] != target.shape[-2:]:
            k = max(1, round(target.shape[-2] / out.shape[-2]))  # the output's stride: every k-th pixel of every k-th row
            t = target[:, ::k, ::k]
            if t.shape[-2:] != out.shape[-2:]:
                t = F.interpolate(target[:, None].float(), size=out.shape[-2:], mode="nearest")[:, 0].to(target.dtype)
        term = loss(out, t)
        first = term if first is None else first
        total = total + w * term
    return total, first


class SoftDiceLoss(nn.Module):
    """``1 - weighted mean_c (2 sum(p_c t_c) + s) / (sum(p_c) + sum(t_c) + s)``, softmax probabilities,
    sums pooled over the whole batch (more stable than per-image Dice for rare classes).

    ``class_weights`` weigh the per-class Dice terms (normalised to sum 1); ignored pixels are removed
    from both sums.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_weights: Sequence[float] | None = None, smooth: float = 1.0) -> None:
        super().__init__()
        self.num_classes, self.ignore_index, self.smooth = num_classes, ignore_index, smooth
        w = torch.ones(num_classes) if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", w / w.sum(), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, onehot, _ = masked_probs(logits, target, self.num_classes, self.ignore_index)
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        return 1.0 - (self.class_weights * dice).sum()


class CrossEntropy(nn.Module):
    """Cross-entropy with optional per-class weights; the mean is over non-ignored pixels, weighted as
    in ``torch.nn.functional.cross_entropy``."""

    def __init__(self, ignore_index: int = 255, class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("weight", w, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target.long(), weight=self.weight, ignore_index=self.ignore_index)


class CEDiceLoss(nn.Module):
    """``ce_lambda * CE + dice_lambda * soft Dice``."""

    def __init__(self, ce: CrossEntropy, dice: SoftDiceLoss, ce_lambda: float = 1.0, dice_lambda: float = 1.0) -> None:
        super().__init__()
        self.ce, self.dice = ce, dice
        self.ce_lambda, self.dice_lambda = ce_lambda, dice_lambda

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce_lambda * self.ce(logits, target) + self.dice_lambda * self.dice(logits, target)


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al. 2017, multi-class): ``-alpha_c (1 - p_t)^gamma log p_t`` per pixel, the
    mean over non-ignored pixels weighted by ``alpha_c`` like weighted cross-entropy (``class_weights`` are the
    ``alpha_c``; ``gamma=0`` is exactly :class:`CrossEntropy`). segmentation_models_pytorch's ``FocalLoss`` is a
    per-class sigmoid loss in multiclass mode, not this one."""

    def __init__(self, ignore_index: int = 255, class_weights: Sequence[float] | None = None, gamma: float = 2.0) -> None:
        super().__init__()
        self.ignore_index, self.gamma = ignore_index, float(gamma)
        w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("weight", w, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        valid = target != self.ignore_index
        t = torch.where(valid, target, torch.zeros_like(target))
        logp = F.log_softmax(logits.float(), dim=1).gather(1, t.unsqueeze(1)).squeeze(1)
        focal = (1.0 - logp.exp()).clamp_min(0.0).pow(self.gamma) * -logp
        w = valid.to(focal.dtype) if self.weight is None else self.weight[t] * valid
        return (focal * w).sum() / w.sum().clamp_min(1e-12)


class TverskyLoss(nn.Module):
    """``1 - weighted mean_c (TP_c + s) / (TP_c + alpha FP_c + beta FN_c + s)`` on softmax probabilities,
    sums pooled over the batch like :class:`SoftDiceLoss` (``alpha = beta = 0.5`` with ``smooth = s / 2`` is that
    Dice loss with ``smooth = s``).
    ``beta > alpha`` penalises missed pixels more than false alarms: the usual choice for a rare class."""

    def __init__(self, num_classes: int, ignore_index: int = 255, class_weights: Sequence[float] | None = None,
                 alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0) -> None:
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.alpha, self.beta, self.smooth = float(alpha), float(beta), float(smooth)
        w = torch.ones(num_classes) if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", w / w.sum(), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, onehot, v = masked_probs(logits, target, self.num_classes, self.ignore_index)
        dims = (0, 2, 3)
        tp = (probs * onehot).sum(dims)
        fp = (probs * (v - onehot)).sum(dims)
        fn = ((v - probs) * onehot).sum(dims)
        index = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        return 1.0 - (self.class_weights * index).sum()


class LovaszSoftmaxLoss(nn.Module):
    """Lovasz-softmax (Berman et al. 2018), the convex surrogate of the Jaccard loss, over the classes present
    in the batch, all pixels of the batch pooled, ignored pixels removed: segmentation_models_pytorch's
    ``LovaszLoss(mode="multiclass", per_image=False)``, whose semantics are these."""

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        from segmentation_models_pytorch.losses import LovaszLoss

        self.inner = LovaszLoss(mode="multiclass", per_image=False, ignore_index=ignore_index, from_logits=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.inner(logits.float(), target.long())


def build_loss(
    name: str,
    num_classes: int,
    ignore_index: int = 255,
    class_weights: Sequence[float] | None = None,
    smooth: float = 1.0,
    ce_lambda: float = 1.0,
    dice_lambda: float = 1.0,
    gamma: float = 2.0,
    alpha: float = 0.3,
    beta: float = 0.7,
    **_: object,
) -> nn.Module:
    """The loss named by ``loss.name``. ``class_weights`` must already be resolved to numbers (``auto``
    is turned into numbers from the train split by ``segkit.train``)."""
    if class_weights is not None and len(class_weights) != num_classes:
        raise SegkitError(
            f"loss.class_weights has {len(class_weights)} values {list(class_weights)}; expected {num_classes} "
            "(one per class), or auto"
        )
    match name:
        case "ce":
            return CrossEntropy(ignore_index, class_weights)
        case "weighted_ce":
            if class_weights is None:
                raise SegkitError("loss.class_weights is null for loss=weighted_ce; expected a list of weights or auto")
            return CrossEntropy(ignore_index, class_weights)
        case "dice":
            return SoftDiceLoss(num_classes, ignore_index, class_weights, smooth)
        case "ce_dice":
            return CEDiceLoss(CrossEntropy(ignore_index, class_weights), SoftDiceLoss(num_classes, ignore_index, None, smooth), ce_lambda, dice_lambda)
        case "focal":
            return FocalLoss(ignore_index, class_weights, gamma)
        case "tversky":
            return TverskyLoss(num_classes, ignore_index, class_weights, alpha, beta, smooth)
        case "lovasz":
            if class_weights is not None:
                raise SegkitError("loss.class_weights is set for loss=lovasz, which has no class weights; expected null "
                                  "(or loss=ce_dice / focal / tversky for weighted losses)")
            return LovaszSoftmaxLoss(ignore_index)
    raise SegkitError(f"loss.name is '{name}'; expected one of {', '.join(LOSS_NAMES)}")
