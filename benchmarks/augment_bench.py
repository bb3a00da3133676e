"""Throughput of :class:`segkit.data.augment.BatchAugment` against per-sample torchvision v2 transforms.

``python benchmarks/augment_bench.py [--quick] [--device cpu|cuda]`` times one batch of 32 random
3x256x256 uint8 images and masks on one CPU thread (or a GPU), with every transform on, and prints
samples per second (the median of repeated runs after warm-up). ``run(quick)`` returns the same
numbers as a dict for ``make bench``.

The torchvision pipeline (flips, RandomAffine, ElasticTransform, ColorJitter on an Image + Mask
pair, one sample at a time) is the per-sample baseline; it does less work than segkit's (no gamma,
noise or blur), and its ElasticTransform ``alpha`` is not in pixels, so only the cost is comparable.
Its ElasticTransform dominates (a full-resolution Gaussian blur of the displacement field), so the
same pipeline without it is reported too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

try:
    from segkit.data.augment import BatchAugment  # noqa: E402
except ModuleNotFoundError:  # run as a script from a checkout without an installed segkit
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from segkit.data.augment import BatchAugment  # noqa: E402

BATCH, CHANNELS, SIZE, CLASSES = 32, 3, 256, 4

SEGKIT_OPTIONS = {
    "hflip": True,
    "vflip": True,
    "rot90": True,
    "affine_p": 1.0,
    "rotate_deg": 15.0,
    "shear_deg": 10.0,
    "scale": (0.9, 1.1),
    "elastic_p": 1.0,
    "elastic_alpha": 10.0,
    "elastic_sigma": 10.0,
    "brightness": 0.2,
    "contrast": 0.2,
    "gamma": 0.2,
    "noise_std": 3.0,
    "blur_p": 0.5,
}


def _median_seconds(fn: Callable[[], object], warmup: int, repeats: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (BATCH, CHANNELS, SIZE, SIZE), dtype=torch.uint8, generator=g)
    mask = torch.randint(0, CLASSES, (BATCH, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return image.to(device), mask.to(device)


def _torchvision_pipeline(elastic: bool = True) -> Callable[[torch.Tensor, torch.Tensor], object]:
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    transforms = [
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomAffine(degrees=15.0, shear=10.0, scale=(0.9, 1.1)),
        v2.ElasticTransform(alpha=10.0, sigma=10.0),
        v2.ColorJitter(brightness=0.2, contrast=0.2),
    ]
    transform = v2.Compose([t for t in transforms if elastic or not isinstance(t, v2.ElasticTransform)])

    def apply(images: torch.Tensor, masks: torch.Tensor) -> list:
        return [
            transform(tv_tensors.Image(im), tv_tensors.Mask(ma)) for im, ma in zip(images, masks, strict=True)
        ]

    return apply


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Time both pipelines on one batch; returns samples/s and milliseconds per batch for each."""
    torch.set_num_threads(1)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    image, mask = _batch(dev)
    aug = BatchAugment(**SEGKIT_OPTIONS, ignore_index=255, value_range=255.0)
    gen = torch.Generator(device=dev).manual_seed(0)
    # Warm-up covers several blur counts: convolution backends compile one kernel per shape.
    seg_s = _median_seconds(
        lambda: aug(image, mask, gen), warmup=3 if quick else 8, repeats=7 if quick else 25, sync=sync
    )
    # torchvision works one sample at a time, so its throughput does not depend on the batch size;
    # its ElasticTransform takes about a quarter of a second per sample here, so --quick times 8.
    n_tv = 8 if quick else BATCH
    tv, tv_rigid = _torchvision_pipeline(), _torchvision_pipeline(elastic=False)
    tv_s = (
        _median_seconds(lambda: tv(image[:n_tv], mask[:n_tv]), warmup=1, repeats=3, sync=sync) * BATCH / n_tv
    )
    rigid_s = _median_seconds(lambda: tv_rigid(image, mask), warmup=1, repeats=3 if quick else 7, sync=sync)
    result = {
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "batch": [BATCH, CHANNELS, SIZE, SIZE],
        "quick": quick,
        "segkit_samples_per_s": round(BATCH / seg_s, 1),
        "segkit_ms_per_batch": round(seg_s * 1e3, 1),
        "torchvision_samples_per_s": round(BATCH / tv_s, 1),
        "torchvision_ms_per_batch": round(tv_s * 1e3, 1),
        "torchvision_samples_timed": n_tv,
        "torchvision_no_elastic_samples_per_s": round(BATCH / rigid_s, 1),
        "speedup": round(tv_s / seg_s, 2),
        "torch": torch.__version__,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about 15 s on one CPU core)")
    parser.add_argument("--device", default="cpu", help="cpu (default, one thread) or cuda")
    args = parser.parse_args()
    result = run(quick=args.quick, device=args.device)
    rows = [
        ("segkit BatchAugment", "segkit"),
        ("torchvision v2 per-sample", "torchvision"),
    ]
    for label, key in rows:
        print(
            f"{label:27s} {result[key + '_samples_per_s']:8.1f} samples/s ({result[key + '_ms_per_batch']} ms/batch)"
        )
    print(f"{'  same without elastic':27s} {result['torchvision_no_elastic_samples_per_s']:8.1f} samples/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
