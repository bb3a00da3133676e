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
