"""Test-time augmentation over the dihedral group: flips and 90-degree rotations of the image, each
prediction mapped back by the inverse transform, probabilities averaged."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from segkit.errors import SegkitError

#: A dihedral element as (quarter turns k, then a horizontal flip?): ``x -> hflip?(rot90(x, k))``.
Transform = tuple[int, bool]

IDENTITY: Transform = (0, False)
HFLIP: Transform = (0, True)
VFLIP: Transform = (2, True)  # rot180 then hflip == vflip
ROTATIONS: tuple[Transform, ...] = ((1, False), (2, False), (3, False))
TRANSPOSES: tuple[Transform, ...] = ((1, True), (3, True))


def dihedral_transforms(flips: bool = True, rot90: bool = True) -> list[Transform]:
    """The transforms :func:`tta_probs` averages over: identity; with ``flips`` the horizontal and
    vertical flips; with ``rot90`` the 90/180/270-degree rotations; with both also the two transposes
    (all 8 elements of the dihedral group)."""
    transforms = [IDENTITY]
    if flips:
        transforms += [HFLIP, VFLIP]
    if rot90:
        transforms += list(ROTATIONS)
    if flips and rot90:
        transforms += list(TRANSPOSES)
    return transforms


def apply_transform(x: Tensor, transform: Transform) -> Tensor:
    """``transform`` applied to the last two (H, W) dimensions of ``x``."""
    k, flip = transform
    y = torch.rot90(x, k, dims=(-2, -1)) if k else x
    return torch.flip(y, dims=(-1,)) if flip else y


def invert_transform(x: Tensor, transform: Transform) -> Tensor:
    """The inverse of ``transform`` applied to the last two dimensions of ``x``."""
    k, flip = transform
    y = torch.flip(x, dims=(-1,)) if flip else x
    return torch.rot90(y, -k, dims=(-2, -1)) if k else y


@torch.inference_mode()
def tta_probs(
    predict_probs: Callable[[Tensor], Tensor], image: Tensor, flips: bool = True, rot90: bool = True
) -> Tensor:
    """Mean of ``predict_probs`` (``[C, H, W] -> [K, H, W]`` probabilities, any image size, e.g. a
    :func:`~segkit.inference.sliding_window_probs` closure) over the dihedral transforms of ``image``
    chosen by ``flips`` and ``rot90`` (see :func:`dihedral_transforms`), each prediction mapped back by
    the inverse transform. Rotations swap H and W, so ``predict_probs`` must accept both orientations.
    Returns float32 ``[K, H, W]``."""
    if not isinstance(image, Tensor) or image.ndim != 3:
        found = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise SegkitError(f"tta_probs image has shape {found}, expected [C, H, W]")
    transforms = dihedral_transforms(flips, rot90)
    total: Tensor | None = None
    for transform in transforms:
        probs = predict_probs(apply_transform(image, transform).contiguous())
        expected = tuple(apply_transform(image[:1], transform).shape[-2:])
        if not isinstance(probs, Tensor) or probs.ndim != 3 or tuple(probs.shape[-2:]) != expected:
            found = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
            raise SegkitError(
                f"tta_probs predict_probs returned {found}, expected [K, {expected[0]}, {expected[1]}]"
            )
        probs = invert_transform(probs.float(), transform)
        if total is None:
            total = probs.clone()
        elif probs.shape != total.shape:
            raise SegkitError(
                f"tta_probs predictions disagree: found {tuple(probs.shape)}, expected {tuple(total.shape)}"
            )
        else:
            total += probs
    assert total is not None
    return total.div_(len(transforms))
