"""The data's fingerprint, from the TRAIN split only, and what the machine offers.

Image sizes and channels; the intensity range as segkit reads it (8-bit per channel, 1st and 99th percentile
per channel); each class's share of the labelled pixels and the number of images it occurs in; its objects
(8-connected components): count, median area, median width. An object's width is twice the largest distance
from any of its pixels to the nearest pixel outside it (scipy's Euclidean distance transform): the diameter
of the largest disc that fits, about 3-6 px for a spirochaete, tens of px for a red blood cell. Cached next to
the train statistics (``data.cache_dir``), keyed the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

#: the fingerprint's layout; a cached file of another version is recomputed
FINGERPRINT_VERSION = 1
#: at most this many pixels per image enter the intensity percentiles (a regular subsample)
_INTENSITY_SAMPLE = 65536


def object_sizes(mask: np.ndarray, class_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Areas (px) and widths (px) of the 8-connected objects of ``class_id`` in ``mask``."""
    from scipy import ndimage

    binary = mask == class_id
    if not binary.any():
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    labels, n = ndimage.label(binary, structure=np.ones((3, 3), bool))
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    # distance to the nearest pixel outside the object; outside the image counts as outside
    dist = ndimage.distance_transform_edt(np.pad(binary, 1))[1:-1, 1:-1]
    # the largest inscribed disc: 2 x the deepest pixel's distance - 1 (a 1 px line is 1 wide, a 5 px band 5)
    widths = 2.0 * np.asarray(ndimage.maximum(dist, labels, index=np.arange(1, n + 1)), dtype=np.float64) - 1.0
    return areas.astype(np.int64), widths


def compute_fingerprint(images: list[np.ndarray], masks: list[np.ndarray], class_names: list[str],
                        ignore_index: int) -> dict[str, Any]:
    """The fingerprint of a split's ``images`` ([H, W, C] uint8) and ``masks`` ([H, W] class ids)."""
    heights = np.array([m.shape[0] for m in masks])
    widths = np.array([m.shape[1] for m in masks])
    channels = int(images[0].shape[-1]) if images else 0
    sample = []
    for img in images:
        flat = np.asarray(img).reshape(-1, channels)  # a tile of a large image is read here
        step = max(1, flat.shape[0] // _INTENSITY_SAMPLE)
        sample.append(flat[::step])
    values = np.concatenate(sample) if sample else np.zeros((0, channels), np.uint8)
    k = len(class_names)
    pixels = np.zeros(k, np.int64)
    images_with = np.zeros(k, np.int64)
    areas: list[list[int]] = [[] for _ in range(k)]
    thick: list[list[float]] = [[] for _ in range(k)]
    for mask in masks:
        mask = np.asarray(mask)
        m = mask[mask != ignore_index]
        counts = np.bincount(m.ravel(), minlength=k)[:k]
        pixels += counts
        images_with += counts > 0
        for c in range(1, k):  # class 0 is the background: its "objects" are the space between
            if counts[c]:
                a, w = object_sizes(np.where(mask == ignore_index, 0, mask), c)
                areas[c] += a.tolist()
                thick[c] += w.tolist()
    total = max(1, int(pixels.sum()))
    classes = []
    for c, name in enumerate(class_names):
        entry: dict[str, Any] = {"name": name, "pixel_share": float(pixels[c] / total), "pixels": int(pixels[c]),
                                 "images": int(images_with[c])}
        if c > 0:
            entry.update(objects=len(areas[c]),
                         median_area=float(np.median(areas[c])) if areas[c] else None,
                         median_width=float(np.median(thick[c])) if thick[c] else None)
        classes.append(entry)
    return {
        "version": FINGERPRINT_VERSION,
        "split": "train",
        "num_images": len(masks),
        "channels": channels,
        "height": {"min": int(heights.min()), "median": float(np.median(heights)), "max": int(heights.max())},
        "width": {"min": int(widths.min()), "median": float(np.median(widths)), "max": int(widths.max())},
        "intensity": {"dtype": "uint8 as read", "p1": np.percentile(values, 1, axis=0).tolist() if len(values) else [],
                      "p99": np.percentile(values, 99, axis=0).tolist() if len(values) else []},
        "classes": classes,
    }


def cpu_bf16_instructions() -> bool:
    """Whether the CPU reports native bf16 instructions (AVX-512 BF16 or AMX; Linux's /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine() -> dict[str, Any]:
    """CPU cores this process may use, torch's threads, whether the CPU has bf16 instructions, and the GPUs with
    their memory."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1)})
    return {"cpu_cores": cores, "torch_threads": torch.get_num_threads(), "cpu_bf16": cpu_bf16_instructions(), "gpus": gpus}


def fingerprint_of(dm: Any) -> dict[str, Any]:
    """The train split's fingerprint of a prepared :class:`~segkit.data.SegDataModule`, from its cache when
    the train files are unchanged (the key of the train statistics)."""
    key = getattr(dm, "stats_key_value", None)
    path = Path(dm.cache_dir) / f"fingerprint-{dm.name}-{key}.json" if dm.cache_dir is not None and key else None
    if path is not None and path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("version") == FINGERPRINT_VERSION:
                cached["source"] = "cached"
                return cached
        except (OSError, ValueError):
            pass
    images, masks, _ = dm.arrays("train")
    fp = compute_fingerprint(images, masks, list(dm.class_names), dm.ignore_index)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(fp, indent=2) + "\n")
            tmp.replace(path)
        except OSError:
            pass
    fp["source"] = "computed"
    return fp
