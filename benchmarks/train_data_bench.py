"""Training data from images larger than memory (issue 16, part 4): a dataset folder holding one large tiled
TIFF (RGB, with its mask TIFF) and two small PNG pairs, prepared by :class:`segkit.data.SegDataModule` with
``data.storage=disk`` (tiles read from the file per crop) and ``data.storage=memory`` (every tile decoded once),
then 64 training batches of 8 random 256 px crops drawn through ``train_dataloader`` as training draws them.

Every case runs in a fresh process, so its peak RSS (VmHWM, :func:`benchmarks.rss.peak_rss_mb`) is its own; the RSS after imports is
recorded beside it. Recorded: peak RSS above that baseline, the preparation time (reading, the checks of every
pixel, the train statistics) and crops per second. The figure that matters: with ``disk`` the peak does not grow
with the image; with ``memory`` it grows by about 4 bytes per pixel (3 channels + the mask).
``run(quick=True)``: 1,024^2 and 2,048^2 with tiles of 256 px, 8 batches (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.large_bench import child, write_input
from benchmarks.rss import peak_rss_mb, rss_mb

SIZES, QUICK_SIZES = (8192, 16384), (1024, 2048)
#: data.tile_size: a TIFF over 4 tiles is read by regions (quick: 512 px, so that small inputs are large)
TILE, QUICK_TILE = 2048, 256
BATCHES, BATCH, CROP = 64, 8, 256
QUICK_BATCHES = 8


def write_dataset(root: Path, size: int) -> dict[str, Any]:
    """``root/images/slide.tif`` (``size``^2 RGB, tiled) + its mask, and two 256 px PNG pairs."""
    import numpy as np
    import tifffile
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    info = write_input(root / "images" / "slide.tif", size)
    t = 512

    def mask_tiles():  # class 1 where the pattern is bright: the same function the image was drawn from
        yy, xx = np.mgrid[0:t, 0:t].astype(np.float32)
        for ty in range(0, size, t):
            for tx in range(0, size, t):
                base = 128 + 80 * np.sin((yy + ty) / 37.0) * np.cos((xx + tx) / 53.0)
                yield (base > 150).astype(np.uint8)

    tifffile.imwrite(root / "masks" / "slide.tif", mask_tiles(), shape=(size, size), dtype=np.uint8, tile=(t, t),
                     compression="zlib", bigtiff=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        img = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / f"small{i}.png")
        Image.fromarray((img[..., 0] > 128).astype(np.uint8)).save(root / "masks" / f"small{i}.png")
    return info


def run_case(root: Path, storage: str, tile: int = TILE, batches: int = BATCHES) -> dict[str, Any]:
    from segkit.data import SegDataModule

    base = rss_mb()
    t0 = time.perf_counter()
    dm = SegDataModule(root=str(root), class_names=["background", "bright"], num_classes=2, format="folder", storage=storage, tile_size=tile,
                       crop_size=CROP, crops_per_image=batches * BATCH, batch_size=BATCH, val_fraction=0.34,
                       format_options={"tile_groups": "tile"})
    dm.prepare()
    prepare_s = time.perf_counter() - t0
    after_prepare = peak_rss_mb()
    t0 = time.perf_counter()
    n = 0
    for k, batch in enumerate(dm.train_dataloader()):
        n += int(batch["image"].shape[0])
        if k + 1 >= batches:
            break
    crops_s = time.perf_counter() - t0
    r, peak = dm.storage_record, peak_rss_mb()
    return {"storage": storage, "mode": r["mode"], "tiles": r["region_tiles"], "decoded_mb": round(r["decoded_bytes"] / 1e6, 1),
            "prepare_s": round(prepare_s, 1), "crops_per_s": round(n / crops_s, 1), "crops": n,
            "rss_after_imports_mb": round(base, 1), "peak_after_prepare_mb": round(after_prepare, 1), "peak_rss_mb": round(peak, 1),
            "peak_above_imports_mb": round(peak - base, 1)}


def run(quick: bool = False, tmp: Path | None = None, sizes: tuple[int, ...] | None = None) -> dict[str, Any]:
    import torch

    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    tmp = Path(tmp or tempfile.mkdtemp(prefix="segkit-train-data-"))
    rows = []
    for size in sizes:
        root = tmp / f"d{size}"
        info = write_dataset(root, size)
        row: dict[str, Any] = {"size": size, **info}
        for storage in ("disk", "memory"):
            row[storage] = child("benchmarks.train_data_bench", ["--case", str(root), "--storage", storage, "--tile", str(QUICK_TILE if quick else TILE),
                                   "--batches", str(QUICK_BATCHES if quick else BATCHES)], timeout=3600)
            print(f"train_data {size}^2 {storage}: {row[storage]}", flush=True)
        rows.append(row)
    small, big = rows[0]["disk"], rows[-1]["disk"]
    return {"quick": quick, "threads": torch.get_num_threads(), "batches": QUICK_BATCHES if quick else BATCHES, "batch": BATCH, "crop": CROP, "cases": rows,
            "tile": QUICK_TILE if quick else TILE,
            "disk_peak_ratio": round(big["peak_above_imports_mb"] / max(small["peak_above_imports_mb"], 1e-9), 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--case", type=Path)
    p.add_argument("--storage", default="disk")
    p.add_argument("--tile", type=int, default=TILE)
    p.add_argument("--batches", type=int, default=BATCHES)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.storage, args.tile, args.batches)))
    else:
        print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
