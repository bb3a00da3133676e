"""Class colours and overlays (NumPy only), shared by prediction outputs, reports and the TensorBoard panel."""

from __future__ import annotations

import numpy as np

# background transparent, then distinct colours (red, green, blue, yellow, magenta, cyan, ...)
PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 220, 75], [0, 130, 200], [255, 225, 25], [240, 50, 230], [70, 240, 240],
     [245, 130, 48], [145, 30, 180], [210, 245, 60], [250, 190, 212], [0, 128, 128]],
    dtype=np.uint8,
)


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class ids ``[H, W]`` -> RGB ``[H, W, 3]`` uint8 (ids beyond the palette wrap around; 255 grey)."""
    out = PALETTE[np.asarray(mask, dtype=np.int64) % len(PALETTE)]
    out[np.asarray(mask) == 255] = 128
    return out


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over an RGB image ``[H, W, 3]`` where ``mask`` is not background (0)."""
    rgb = image.astype(np.float32)
    fg = (mask > 0)[..., None]
    blended = (1 - alpha) * rgb + alpha * colorize(mask).astype(np.float32)
    return np.where(fg, blended, rgb).clip(0, 255).astype(np.uint8)



#: error colours: false positive = predicted a foreground class where the truth differs (white, which no
#: class uses); false negative = a foreground pixel of the truth predicted otherwise (the first candidate no
#: class of the data uses: orange, else brown, else violet)
FALSE_POSITIVE = np.array([255, 255, 255], dtype=np.uint8)
_FN_CANDIDATES = np.array([[255, 128, 0], [140, 70, 20], [120, 0, 255]], dtype=np.uint8)


def error_colors(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive colour, false-negative colour), neither close to the colour of any of ``num_classes``."""
    used = PALETTE[np.arange(max(1, num_classes)) % len(PALETTE)].astype(np.int64)
    for cand in _FN_CANDIDATES:
        if np.abs(used - cand.astype(np.int64)).sum(axis=1).min() > 90:
            return FALSE_POSITIVE, cand
    return FALSE_POSITIVE, _FN_CANDIDATES[-1]


def error_legend(num_classes: int) -> list[tuple[str, np.ndarray]]:
    fp, fn = error_colors(num_classes)
    return [("false positive (predicted a class the truth does not have)", fp),
            ("false negative (a true class predicted otherwise)", fn)]


def error_map(mask: np.ndarray, pred: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """``[H, W]`` int8: 0 correct (or ignored), 1 false positive, 2 false negative.

    A wrong pixel whose truth is background (0) is a false positive of the predicted class; a wrong pixel
    whose truth is a foreground class is a false negative of that class (a swap between two foreground
    classes counts as the truth's class missed)."""
    mask, pred = np.asarray(mask), np.asarray(pred)
    wrong = (mask != pred) & (mask != ignore_index)
    out = np.zeros(mask.shape, dtype=np.int8)
    out[wrong & (mask == 0)] = 1
    out[wrong & (mask > 0)] = 2
    return out


def error_overlay(image: np.ndarray, mask: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255,
                  dim: float = 0.4) -> np.ndarray:
    """RGB ``[H, W, 3]``: the input dimmed, false positives and false negatives in :func:`error_colors`,
    ignored pixels grey."""
    rgb = (np.asarray(image, dtype=np.float32) * dim).clip(0, 255).astype(np.uint8)
    fp, fn = error_colors(num_classes)
    err = error_map(mask, pred, ignore_index)
    rgb[err == 1] = fp
    rgb[err == 2] = fn
    rgb[np.asarray(mask) == ignore_index] = 128
    return rgb
