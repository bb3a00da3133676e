"""Images larger than memory: peak resident memory and Mpx/s of region-by-region prediction
(:func:`segkit.inference.large.predict_large`) on synthetic tiled TIFFs of 4,096^2, 20,000^2 and 50,000^2 RGB
pixels, beside the whole-image path (``make_predictor`` on the decoded image) at 4,096^2.

Every case runs in a fresh process (``python -m benchmarks.large_bench --case ...``), so each peak RSS
(VmHWM, :func:`benchmarks.rss.peak_rss_mb`) is that case's alone; the process's RSS after imports and model set-up is recorded beside
it. The input is written beforehand by another process, tile by tile (zlib, 512 px tiles; a smooth
pattern with a hashed texture). The network is deliberately trivial (one 1x1 convolution): the figures
measure the pipeline that grows with the image (reading, decoding, windows, normalisation, softmax,
blending, labels, writing), not a network's arithmetic, which is the same per pixel at every size (a
real network only adds a constant cost per pixel, and makes the ratios easier to meet). Windows: 512 px, 25 %
overlap, Gaussian blend, batches of 4, as ``segkit.predict``'s defaults.

Targets (issue 16): peak RSS flat within 1.5x from 4k^2 to 50k^2, Mpx/s within 10 % of the 4k^2 input.
``run(quick=True)`` uses 1,024^2 and 2,048^2 inputs (a smoke test, figures meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.rss import peak_rss_mb, rss_mb

ROOT = Path(__file__).resolve().parent.parent
SIZES, QUICK_SIZES = (4096, 20000, 50000), (1024, 2048)
TILE_IN = 512
RSS_TARGET, SPEED_TARGET = 1.5, 0.90


def write_input(path: Path, size: int) -> dict[str, Any]:
    """A ``size`` x ``size`` RGB tiled, zlib-compressed BigTIFF written tile by tile."""
    import numpy as np
    import tifffile

    t0 = time.perf_counter()
    yy, xx = np.mgrid[0:TILE_IN, 0:TILE_IN].astype(np.float32)

    def tiles():
        for ty in range(0, size, TILE_IN):
            for tx in range(0, size, TILE_IN):
                y, x = yy + ty, xx + tx
                base = 128 + 80 * np.sin(y / 37.0) * np.cos(x / 53.0)
                texture = ((y * 73856093 + x * 19349663).astype(np.int64) % 31 - 15).astype(np.float32)
                g = np.clip(base + texture, 0, 255).astype(np.uint8)
                yield np.stack([g, 255 - g, (g // 2 + 64).astype(np.uint8)], axis=-1)

    tifffile.imwrite(path, tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(TILE_IN, TILE_IN), compression="zlib",
                     bigtiff=True, photometric="rgb")
    return {"write_s": round(time.perf_counter() - t0, 1), "file_mb": round(path.stat().st_size / 2**20, 1)}


def _network():
    import torch
    from torch import nn

    from segkit.models.network import SegNetwork

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 1))
    return SegNetwork(net, ["background", "a", "b"], [0.5] * 3, [0.25] * 3, channels_last=True).eval()


def run_case(path: Path, mode: str, out: Path) -> dict[str, Any]:
    """One prediction in this process: ``mode`` is ``regions`` or ``whole``."""
    import numpy as np
    import torch

    module = _network()
    with torch.inference_mode():
        module(torch.zeros((1, 3, 64, 64), dtype=torch.uint8))
    set_up = rss_mb()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if mode == "regions":
        from segkit.inference.large import predict_large

        info = predict_large(path, [module], out, inference={"tile": 512, "overlap": 0.25, "batch_size": 4}, tta={}, post=None)
        labels = info["labels"]
    else:
        import tifffile

        from segkit.inference.predictor import make_predictor

        image = tifffile.imread(path)
        predictor = make_predictor([module], {"tile": 512, "overlap": 0.25, "batch_size": 4}, {}, image.shape[0] * image.shape[1])
        with torch.inference_mode():
            probs = predictor(torch.from_numpy(image).permute(2, 0, 1))
        lab = probs.numpy().argmax(0).astype(np.uint8)
        labels = str(out / "labels.tif")
        tifffile.imwrite(labels, lab, tile=(256, 256), compression="zlib")
    seconds = time.perf_counter() - t0
    import tifffile

    with tifffile.TiffFile(path) as tif:
        h, w = tif.series[0].shape[:2]
    return {"mode": mode, "size": [h, w], "seconds": round(seconds, 2), "mpx_per_s": round(h * w / 1e6 / seconds, 3),
            "rss_after_setup_mb": round(set_up, 1), "peak_rss_mb": round(peak_rss_mb(), 1), "labels": labels}


def child(module: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python -m <module> <args>`` in a fresh process (its own peak RSS) and return the JSON of its last line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{module.rsplit('.', 1)[-1]} {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(args: list[str], timeout: float) -> dict[str, Any]:
    return child("benchmarks.large_bench", args, timeout)


def run(quick: bool = False, tmp: Path | None = None, sizes: tuple[int, ...] | None = None) -> dict[str, Any]:
    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    tmp = Path(tmp or tempfile.mkdtemp(prefix="segkit-large-"))
    tmp.mkdir(parents=True, exist_ok=True)
    threads = int(os.environ.get("SEGKIT_BENCH_THREADS", "0")) or None
    cases = []
    for size in sizes:
        path = tmp / f"input_{size}.tif"
        written = _child(["--write", str(path), "--size", str(size)], timeout=7200)
        row = {"size": size, **written}
        row["regions"] = _child(["--case", str(path), "--mode", "regions", "--out", str(tmp / f"out_{size}")], timeout=7200)
        if size == sizes[0]:
            row["whole"] = _child(["--case", str(path), "--mode", "whole", "--out", str(tmp / f"whole_{size}")], timeout=7200)
            import numpy as np
            import tifffile

            a = tifffile.imread(row["regions"]["labels"])
            b = tifffile.imread(row["whole"]["labels"])
            row["labels_equal_share"] = round(float(np.mean(a == b)), 6)
        for p in (tmp / f"out_{size}").glob("*"):
            p.unlink() if p.is_file() else None
        path.unlink()
        cases.append(row)
    small = cases[0]["regions"]
    for row in cases:
        r = row["regions"]
        row["rss_ratio"] = round(r["peak_rss_mb"] / small["peak_rss_mb"], 3)
        row["speed_ratio"] = round(r["mpx_per_s"] / small["mpx_per_s"], 3)
    big = cases[-1]
    return {"quick": quick, "threads": threads, "cases": cases,
            "rss_flat": big["rss_ratio"] <= RSS_TARGET, "speed_flat": big["speed_ratio"] >= SPEED_TARGET,
            "targets": {"rss_ratio_max": RSS_TARGET, "speed_ratio_min": SPEED_TARGET}}


def _checkpoint(path: Path) -> Path:
    """A small U-Net checkpoint with random weights, saved as segkit.train saves one."""
    import torch

    from segkit.training.checkpointing import save_module
    from segkit.training.module import SegModule

    torch.manual_seed(0)
    module = SegModule(model={"_target_": "segkit.models.UNet", "depth": 3, "base_width": 8, "in_channels": 3, "num_classes": 3},
                       loss={"name": "ce"}, optimizer={"_target_": "torch.optim.Adam"}, class_names=["background", "a", "b"],
                       norm_mean=[0.5] * 3, norm_std=[0.25] * 3)
    return save_module(module, path)


def processes_section(quick: bool, tmp: Path) -> dict[str, Any]:
    """``make bench`` section ``processes``: :func:`run_processes` at the benchmark's sizes (tiny with --quick)."""
    return run_processes(tmp, images=4 if quick else 64, size=256 if quick else 512, rounds=1 if quick else 3)


def run_processes(tmp: Path, images: int = 64, size: int = 512, devices: int = 2, rounds: int = 3) -> dict[str, Any]:
    """``python -m segkit.predict`` on a folder of ``images`` RGB PNGs, side by side: ``devices=1 threads=1``
    (one device: one core), ``devices=N`` (N processes, cores / N threads each) and ``devices=1`` with torch's
    default threads (one process on every core), in ``rounds`` interleaved rounds (ABCABC...: a drift of the
    shared machine's speed hits every case alike); each case's time is the median over the rounds. The time is
    ``predict.json``'s ``wall_time_s`` (from reading the inputs to the merged outputs, starting the processes
    included); the label maps are compared. The target is the speed-up from one device to N, as on a GPU node
    where each process has a device of its own; against one process on every core the ratio is what a CPU-only
    machine gains, reported beside it."""
    import numpy as np
    from PIL import Image

    ckpt = _checkpoint(tmp / "ckpt" / "best.ckpt")
    folder = tmp / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(images):
        base = 128 + 80 * np.sin(yy / (20.0 + i)) * np.cos(xx / 31.0)
        img = np.clip(base[..., None] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i:03d}.png")
    cases = {"one_device": (1, ["threads=1"]), "devices": (devices, []), "all_cores": (1, [])}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    for r in range(rounds):
        for name, (n, extra) in cases.items():
            out = tmp / f"out_{name}_{r}"
            cmd = [sys.executable, "-m", "segkit.predict", f"ckpt_path={ckpt}", f"input={folder}", f"output={out}", f"devices={n}",
                   f"paths.log_dir={tmp / 'logs' / name}", *extra]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"segkit.predict devices={n} {' '.join(extra)} failed: {proc.stderr[-2000:]}")
            summary = json.loads((out / "predict.json").read_text())
            runs[name].append({"predict_s": summary["wall_time_s"], "command_s": round(wall, 1), "summary": summary})
    rows = {}
    for name, (n, extra) in cases.items():
        summary = runs[name][0]["summary"]
        inner = statistics.median(x["predict_s"] for x in runs[name])
        rows[name] = {"case": name, "devices": n, "threads": summary.get("threads_per_process", 1 if extra else "default"),
                      "start_method": summary.get("start_method", "-"), "predict_s": inner,
                      "predict_s_rounds": [x["predict_s"] for x in runs[name]],
                      "command_s": statistics.median(x["command_s"] for x in runs[name]), "images_per_s": round(images / inner, 2)}
    ref = sorted((tmp / "out_one_device_0").glob("*_labels.png"))
    same = len(ref) == images and all(
        np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(tmp / f"out_{name}_{r}" / p.name)))
        for name in cases for r in range(rounds) for p in ref)
    per_round = [round(a["predict_s"] / b["predict_s"], 3) for a, b in zip(runs["one_device"], runs["devices"], strict=True)]
    return {"images": images, "size": size, "devices": devices, "rounds": rounds, "rows": list(rows.values()),
            "speedup": round(rows["one_device"]["predict_s"] / rows["devices"]["predict_s"], 3), "speedup_rounds": per_round,
            "speedup_vs_all_cores": round(rows["all_cores"]["predict_s"] / rows["devices"]["predict_s"], 3),
            "identical_outputs": bool(same), "target_speedup": 1.8, "model": "U-Net depth 3, base width 8 (random weights)"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write")
    parser.add_argument("--size", type=int)
    parser.add_argument("--case")
    parser.add_argument("--mode", default="regions")
    parser.add_argument("--out")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes (default 4096,20000,50000)")
    args = parser.parse_args(argv)
    if args.write:
        print(json.dumps(write_input(Path(args.write), args.size)))
    elif args.case:
        print(json.dumps(run_case(Path(args.case), args.mode, Path(args.out))))
    else:
        sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else None
        print(json.dumps(run(quick=args.quick, sizes=sizes), indent=2))


if __name__ == "__main__":
    main()
