"""Throughput of sliding-window inference against a plain forward pass over the same pixels.

``python benchmarks/inference_bench.py [--quick] [--device cpu|cuda] [--threads N]`` predicts one
random 3x2048x2048 image (``--quick``: 1024x1024) with :func:`segkit.inference.sliding_window_probs`
(tile 512, batches of 4, Gaussian blending) and a U-Net (``depth=4, base_width=16``, eval mode,
channels_last), at overlap 0 and 0.25, and times the network alone on the same number of 512x512
tiles as the overlap-0 grid, already stacked (no tile extraction, softmax or stitching). It reports
megapixels of image per second (median of interleaved repeated runs after a warm-up), the overhead of
the sliding window at overlap 0 over the plain forward (target: under 10 %), and the time of the
sliding window with a free network (extraction, softmax, blending, stitching alone), a load-robust
estimate of the same overhead. ``run(quick)`` returns the
numbers as a dict.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

try:
    from benchmarks.common import interleaved
    from segkit.inference import sliding_window_probs, window_starts
    from segkit.models import UNet
except ModuleNotFoundError:  # run as a script (benchmarks/ not on the path, or segkit not installed)
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.common import interleaved
    from segkit.inference import sliding_window_probs, window_starts
    from segkit.models import UNet

TILE, BATCH, CHANNELS, CLASSES = 512, 4, 3, 3


def stitch_only_seconds(size: int, overlap: float = 0.0, repeats: int = 5, device: str = "cpu") -> float:
    """Median seconds of :func:`sliding_window_probs` on a ``3 x size x size`` image with a free network
    (it returns a ready logits buffer): tile extraction, softmax, blending and stitching alone. Less
    sensitive to other jobs' load than the end-to-end difference, since it is a short run."""
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    image = torch.randn(CHANNELS, size, size, device=dev)
    logits = torch.zeros(BATCH, CLASSES, TILE, TILE, device=dev).contiguous(memory_format=torch.channels_last)

    def free_net(x: torch.Tensor) -> torch.Tensor:
        x.contiguous(memory_format=torch.channels_last)  # the layout change the real fn makes
        return logits[: x.shape[0]]

    def once() -> None:
        sliding_window_probs(
            free_net, image, CLASSES, tile=TILE, overlap=overlap, stride=32, batch_size=BATCH
        )

    return interleaved({"stitch": once}, 1, repeats, sync)["stitch"]


def run(quick: bool = False, device: str = "cpu", threads: int | None = None) -> dict:
    """Time sliding-window prediction at overlap 0 and 0.25 and the plain tiled forward; returns
    megapixels/s for each, the seconds per image and the overlap-0 overhead ratio."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    size = 1024 if quick else 2048
    torch.manual_seed(0)
    net = UNet(in_channels=CHANNELS, num_classes=CLASSES, depth=4, base_width=16).eval()
    net = net.to(dev, memory_format=torch.channels_last)
    image = torch.randn(CHANNELS, size, size, device=dev)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return net(x.contiguous(memory_format=torch.channels_last))

    def sliding(overlap: float) -> Callable[[], object]:
        return lambda: sliding_window_probs(
            fn, image, CLASSES, tile=TILE, overlap=overlap, stride=32, batch_size=BATCH, blend="gaussian"
        )

    # Plain forward: the overlap-0 grid's tiles, stacked once outside the timing, in the same batches.
    n_tiles = (size // TILE) ** 2
    tiles = (
        image.unfold(1, TILE, TILE)
        .unfold(2, TILE, TILE)
        .permute(1, 2, 0, 3, 4)
        .reshape(-1, CHANNELS, TILE, TILE)
    )
    batches = [
        tiles[i : i + BATCH].contiguous(memory_format=torch.channels_last) for i in range(0, n_tiles, BATCH)
    ]

    def plain() -> None:
        with torch.inference_mode():
            for batch in batches:
                net(batch)

    # quick: the first plain pass warms the kernels up for all three (same network, same tile shape)
    if dev.type == "cuda":
        warmup, repeats, plain_warmup = 3, 10, 3
    else:
        warmup, repeats, plain_warmup = (0, 2, 1) if quick else (1, 5, 1)
    plain()
    for _ in range(plain_warmup - 1):
        plain()
    seconds = interleaved(
        {"plain": plain, "sw0": sliding(0.0), "sw25": sliding(0.25)}, warmup, repeats, sync
    )
    plain_s, sw0_s, sw25_s = seconds["plain"], seconds["sw0"], seconds["sw25"]
    stitch_s = stitch_only_seconds(size, 0.0, repeats=5, device=device)
    megapixels = size * size / 1e6
    windows_25 = len(window_starts(size, TILE, 0.25)) ** 2
    return {
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "image": [CHANNELS, size, size],
        "tile": TILE,
        "batch_size": BATCH,
        "quick": quick,
        "windows_overlap_0": n_tiles,
        "windows_overlap_0.25": windows_25,
        "plain_forward_mpx_per_s": round(megapixels / plain_s, 3),
        "sliding_overlap_0_mpx_per_s": round(megapixels / sw0_s, 3),
        "sliding_overlap_0.25_mpx_per_s": round(megapixels / sw25_s, 3),
        "plain_forward_s": round(plain_s, 3),
        "sliding_overlap_0_s": round(sw0_s, 3),
        "sliding_overlap_0.25_s": round(sw25_s, 3),
        "overhead_overlap_0": round(sw0_s / plain_s - 1.0, 4),
        "stitch_only_overlap_0_s": round(stitch_s, 4),
        "stitch_only_overhead_overlap_0": round(stitch_s / plain_s, 4),
        "overhead_target": 0.10,
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1024x1024 image and fewer repeats")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    result = run(quick=args.quick, device=args.device, threads=args.threads)
    for label, key in [
        ("plain forward (same tiles)", "plain_forward"),
        ("sliding window, overlap 0", "sliding_overlap_0"),
        ("sliding window, overlap 0.25", "sliding_overlap_0.25"),
    ]:
        print(f"{label:30s} {result[key + '_mpx_per_s']:8.3f} Mpx/s ({result[key + '_s']} s/image)")
    print(f"overhead at overlap 0: {100 * result['overhead_overlap_0']:.1f} % (target < 10 %)")
    print(
        f"stitching alone at overlap 0: {result['stitch_only_overlap_0_s']} s/image, "
        f"{100 * result['stitch_only_overhead_overlap_0']:.1f} % of the plain forward"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
