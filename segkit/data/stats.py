"""Dataset statistics of the TRAIN split: per-channel mean/std and class pixel frequencies, and the
class weights derived from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from segkit.errors import SegkitError

WEIGHT_METHODS = ("inverse", "median_frequency", "one_minus_frequency")


@dataclass
class DatasetStats:
    """``mean``/``std`` are per channel in units of the [0, 1] intensity range (pixel / 255).

    ``class_pixels[c]``: labelled pixels of class c; ``present_pixels[c]``: labelled pixels of the
    images in which class c occurs (the denominator of the SegNet paper's median-frequency balancing).
    """

    num_images: int
    num_pixels: int
    mean: list[float]
    std: list[float]
    class_pixels: list[int]
    present_pixels: list[int]

    @property
    def class_frequency(self) -> list[float]:
        total = sum(self.class_pixels)
        return [c / total if total else 0.0 for c in self.class_pixels]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_frequency"] = self.class_frequency
        return d


#: pixels per chunk of the running sums in :func:`compute_stats`
_CHUNK = 1 << 20


def compute_stats(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], num_classes: int, ignore_index: int | None
) -> DatasetStats:
    """Statistics over ``images`` (``[H, W, C]`` uint8) and ``masks`` (``[H, W]`` class ids), pooled
    over every pixel of every image (images of different sizes weigh by their pixel count)."""
    if not images:
        raise SegkitError("the train split is empty; expected at least one training image (check data.val_fraction)")
    channels = images[0].shape[-1]
    s = np.zeros(channels, dtype=np.float64)
    s2 = np.zeros(channels, dtype=np.float64)
    n = 0
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    present_pixels = np.zeros(num_classes, dtype=np.int64)
    for image, mask in zip(images, masks, strict=True):
        image, mask = np.asarray(image), np.asarray(mask)  # a tile of a large image is read here
        flat = image.reshape(-1, channels)
        # exact integer sums, a million pixels at a time (a float64 copy of a whole image cost 24 bytes a pixel, twice)
        for i in range(0, flat.shape[0], _CHUNK):
            part = flat[i : i + _CHUNK].astype(np.int64)
            s += part.sum(0)
            s2 += np.einsum("ij,ij->j", part, part)
        n += flat.shape[0]
        m = mask.ravel()
        if ignore_index is not None:
            m = m[m != ignore_index]
        counts = np.bincount(m, minlength=num_classes)[:num_classes]
        class_pixels += counts
        present_pixels += np.where(counts > 0, m.size, 0)
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    return DatasetStats(
        num_images=len(images),
        num_pixels=int(n),
        mean=(mean / 255.0).tolist(),
        std=np.maximum(std / 255.0, 1e-6).tolist(),
        class_pixels=class_pixels.tolist(),
        present_pixels=present_pixels.tolist(),
    )


def class_weights(stats: DatasetStats, method: str) -> list[float]:
    """Per-class loss weights from the train split's frequencies.

    - ``inverse``: ``1 / f_c``, scaled so the weights average 1 over the classes;
    - ``median_frequency``: ``median(f) / f_c`` with ``f_c = class_pixels / present_pixels``
      (Eigen & Fergus, used by SegNet);
    - ``one_minus_frequency``: ``1 - f_c`` with ``f_c`` the share of all labelled pixels.

    A class with no training pixels gets the largest weight of the classes present.
    """
    counts = np.asarray(stats.class_pixels, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise SegkitError("the train split has no labelled pixels; cannot compute class weights (loss.class_weights=auto)")
    if method == "inverse":
        f = counts / counts.sum()
        w = np.zeros_like(f)
        w[present] = 1.0 / f[present]
        w[present] *= present.sum() / w[present].sum()
    elif method == "median_frequency":
        f = np.zeros_like(counts)
        denom = np.asarray(stats.present_pixels, dtype=np.float64)
        f[present] = counts[present] / denom[present]
        w = np.zeros_like(f)
        w[present] = np.median(f[present]) / f[present]
    elif method == "one_minus_frequency":
        w = 1.0 - counts / counts.sum()
    else:
        raise SegkitError(f"loss.weight_method is '{method}'; expected one of {', '.join(WEIGHT_METHODS)}")
    if not present.all():
        w[~present] = w[present].max()
    return [float(x) for x in w]
