"""Model ensembles: the mean of the members' softmax probabilities."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from segkit.errors import SegkitError


@torch.inference_mode()
def ensemble_probs(predictors: Sequence[Callable[[Tensor], Tensor]], image: Tensor) -> Tensor:
    """Mean over ``predictors`` (each ``image -> [K, H, W]`` probabilities, e.g. a
    :func:`~segkit.inference.sliding_window_probs` or :func:`~segkit.inference.tta_probs` closure per
    model) of their probabilities, averaged in probability space (not logits). Returns float32
    ``[K, H, W]`` on the first member's device. Raises :class:`SegkitError` when the members disagree on
    ``K`` or the image size."""
    if len(predictors) == 0:
        raise SegkitError("ensemble_probs found no predictors, expected at least one")
    total: Tensor | None = None
    for i, predict in enumerate(predictors):
        probs = predict(image)
        if not isinstance(probs, Tensor) or probs.ndim != 3:
            found = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
            raise SegkitError(f"ensemble member {i} returned {found}, expected probabilities [K, H, W]")
        if total is None:
            total = probs.float().clone()
            continue
        if probs.shape[0] != total.shape[0]:
            raise SegkitError(
                f"ensemble member {i} predicts {probs.shape[0]} classes, expected {total.shape[0]} "
                "(the first member's)"
            )
        if probs.shape != total.shape:
            raise SegkitError(
                f"ensemble member {i} returned shape {tuple(probs.shape)}, expected {tuple(total.shape)} "
                "(the first member's)"
            )
        total += probs.float().to(total.device)
    assert total is not None
    return total.div_(len(predictors))
