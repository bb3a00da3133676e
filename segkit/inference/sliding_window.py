"""Sliding-window inference: softmax probabilities for images larger than a network's tile.

Windows of ``tile`` pixels are laid on a grid with step ``tile * (1 - overlap)``, the last window flush
with the image border, run through the network in batches, and blended per pixel with a weighted
average of their softmax probabilities (a Gaussian that down-weights window borders, as in MONAI and
nnU-Net, or constant weights). Typical use with a :class:`segkit.models.network.SegNetwork` ``model`` (which
normalises uint8 input and pads to its stride itself)::

    probs = sliding_window_probs(model, image.float(), num_classes=model.num_classes, stride=model.stride)

``fn`` may run on a GPU while the accumulators stay on the CPU (``stitch_device="cpu"``), so an image
whose ``[K, H, W]`` probabilities do not fit on the GPU can still be predicted.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from segkit.errors import SegkitError
from segkit.models.network import pad_to_stride

#: Smallest Gaussian blend weight: window borders still count, and every pixel's weight sum is > 0.
MIN_WEIGHT = 1e-3

BLEND_MODES = ("gaussian", "constant")


def gaussian_weight(tile: tuple[int, int], sigma_scale: float = 0.125) -> Tensor:
    """Blend weights ``[h, w]`` (float32) for a ``tile = (h, w)`` window: a Gaussian centred in the tile
    with standard deviation ``sigma_scale * h`` (rows) and ``sigma_scale * w`` (columns), normalised to
    a maximum of 1 and clamped below at :data:`MIN_WEIGHT` so border pixels still count.

    The centre is ``((h - 1) / 2, (w - 1) / 2)``, so the weights are symmetric under flips (and, for
    square tiles, rotations).
    """
    h, w = (int(tile[0]), int(tile[1]))
    if h < 1 or w < 1:
        raise SegkitError(f"gaussian_weight tile must be positive, found {tile!r}, expected (h, w) >= 1")
    if not sigma_scale > 0:
        raise SegkitError(f"gaussian_weight sigma_scale must be positive, found {sigma_scale!r}")

    def profile(n: int) -> Tensor:
        pos = torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0
        return torch.exp(-0.5 * (pos / (sigma_scale * n)) ** 2)

    weight = torch.outer(profile(h), profile(w))
    weight = weight / weight.max()
    return weight.clamp_(min=MIN_WEIGHT).to(torch.float32)


def window_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of windows of size ``tile`` along an axis of ``length`` pixels: a step of
    ``max(1, floor(tile * (1 - overlap)))``, with a last window flush with the end. A ``tile`` at least
    as long as the axis gives one window at 0 (of size ``min(tile, length)``)."""
    if tile >= length:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif isinstance(value, tuple | list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise SegkitError(f"{name} must be an int or a pair of ints (h, w), found {value!r}")
    if min(pair) < 1:
        raise SegkitError(f"{name} must be positive, found {value!r}")
    return pair


def _logits(fn: Callable[[Tensor], Tensor], x: Tensor, stride: int, num_classes: int) -> Tensor:
    """``fn`` on ``x [N, C, h, w]`` padded to ``stride``, cropped back to ``[N, K, h, w]``, as float32."""
    h, w = x.shape[-2:]
    out = fn(pad_to_stride(x, stride))
    if not isinstance(out, Tensor) or out.ndim != 4:
        found = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise SegkitError(f"the model returned {found}, expected logits [N, K, H, W]")
    if out.shape[1] != num_classes:
        raise SegkitError(f"the model returned {out.shape[1]} classes, expected num_classes={num_classes}")
    ph, pw = h + (-h) % stride, w + (-w) % stride
    if out.shape[0] != x.shape[0] or tuple(out.shape[-2:]) != (ph, pw):
        raise SegkitError(
            f"the model returned logits of shape {tuple(out.shape)} for input {(x.shape[0], x.shape[1], ph, pw)}, "
            f"expected [{x.shape[0]}, {num_classes}, {ph}, {pw}]"
        )
    # back to NCHW once: a channels_last network returns NHWC-strided logits, and softmax, weighting and the
    # accumulation into the NCHW canvas would each pay for the layout mismatch
    return out[..., :h, :w].float().contiguous()


@torch.inference_mode()
def sliding_window_probs(
    fn: Callable[[Tensor], Tensor],
    image: Tensor,
    num_classes: int,
    tile: int | tuple[int, int] = 512,
    overlap: float = 0.25,
    stride: int = 32,
    batch_size: int = 4,
    blend: str = "gaussian",
    stitch_device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Softmax probabilities ``[K, H, W]`` (float32, on ``stitch_device``) for ``image [C, H, W]``.

    Args:
        fn: a network, ``x [N, C, h, w] -> logits [N, K, h, w]`` with ``h``, ``w`` multiples of
            ``stride`` (e.g. ``model.net`` on normalised input, or a ``SegNetwork``).
        image: ``[C, H, W]``, passed through as it is (normalised or raw, any dtype ``fn`` accepts);
            windows are cut on its device, where ``fn`` runs.
        num_classes: ``K``; the logits must have that many channels.
        tile: window size, ``int`` or ``(h, w)``; clipped to the image size. Windows (and an image
            smaller than the tile) whose size is not a multiple of ``stride`` are padded at the
            bottom/right (reflect, else replicate) and the prediction cropped back.
        overlap: fraction of a window shared with its neighbour, in ``[0, 1)``.
        stride: the network's output stride (``segkit.models.output_stride(net)``).
        batch_size: windows per forward pass.
        blend: ``"gaussian"`` (:func:`gaussian_weight`) or ``"constant"`` per-pixel weights.
        stitch_device: device of the ``[K, H, W]`` accumulators; ``None``: the image's device.
        progress: called as ``progress(windows_done, windows_total)`` after each batch.

    An image that fits in one tile once padded to ``stride`` takes a single forward pass. Runs under
    ``torch.inference_mode``, so the result is an inference tensor (``.clone()`` it outside that mode
    before modifying it in place).
    """
    if not isinstance(image, Tensor) or image.ndim != 3:
        found = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise SegkitError(f"sliding_window_probs image has shape {found}, expected [C, H, W]")
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise SegkitError(f"sliding_window_probs num_classes must be a positive int, found {num_classes!r}")
    th, tw = _pair(tile, "sliding_window_probs tile")
    if not 0.0 <= overlap < 1.0:
        raise SegkitError(f"sliding_window_probs overlap must be in [0, 1), found {overlap!r}")
    if not (isinstance(stride, int) and stride >= 1):
        raise SegkitError(f"sliding_window_probs stride must be a positive int, found {stride!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise SegkitError(f"sliding_window_probs batch_size must be a positive int, found {batch_size!r}")
    if blend not in BLEND_MODES:
        raise SegkitError(
            f"sliding_window_probs blend must be one of {', '.join(BLEND_MODES)}, found {blend!r}"
        )
    out_device = image.device if stitch_device is None else torch.device(stitch_device)
    _, height, width = image.shape

    # Fast path: the whole (stride-padded) image fits in one window.
    if math.ceil(height / stride) * stride <= th and math.ceil(width / stride) * stride <= tw:
        probs = torch.softmax(_logits(fn, image.unsqueeze(0), stride, num_classes), dim=1)[0]
        if progress is not None:
            progress(1, 1)
        return probs.to(out_device)

    th, tw = min(th, height), min(tw, width)
    origins = [(y, x) for y in window_starts(height, th, overlap) for x in window_starts(width, tw, overlap)]
    weight = gaussian_weight((th, tw)) if blend == "gaussian" else None

    acc = torch.zeros((num_classes, height, width), dtype=torch.float32, device=out_device)
    weight_sum = torch.zeros((height, width), dtype=torch.float32, device=out_device)
    stitch_weight = weight.to(out_device) if weight is not None else None
    run_weight = weight.to(image.device) if weight is not None else None
    for y, x in origins:
        if stitch_weight is None:
            weight_sum[y : y + th, x : x + tw] += 1.0
        else:
            weight_sum[y : y + th, x : x + tw] += stitch_weight

    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        # one copy per window, straight into the channels_last layout conv nets run fastest in on CPU
        windows = torch.empty((len(chunk), image.shape[0], th, tw), dtype=image.dtype, device=image.device,
                              memory_format=torch.channels_last)
        for i, (y, x) in enumerate(chunk):
            windows[i].copy_(image[:, y : y + th, x : x + tw])
        probs = torch.softmax(_logits(fn, windows, stride, num_classes), dim=1)
        if run_weight is not None:
            probs = probs.mul_(run_weight)
        probs = probs.to(out_device, non_blocking=False)
        for (y, x), p in zip(chunk, probs, strict=True):
            acc[:, y : y + th, x : x + tw] += p
        if progress is not None:
            progress(start + len(chunk), len(origins))
    return acc.div_(weight_sum)
