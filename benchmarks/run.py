"""``python -m benchmarks.run [--quick]`` (``make bench``): run every benchmark in one process, record the
machine, and write ``BENCHMARKS.md`` and ``benchmarks/results.json``.

Each section reports ratios measured side by side in this run (absolute times on shared machines are
noisy). Sections so far: sliding-window prediction vs a plain forward pass (issue 4) and the input
pipeline's batched augmentation (issue 3). Issue 6 adds training overhead, hardware efficiency,
scaling and precision.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from pathlib import Path

import torch

from benchmarks import augment_bench, inference_bench

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "gpu": gpu, "python": platform.python_version(), "load_average_1_5_15_min": load}


def render(results: dict) -> str:
    m, aug, inf = results["machine"], results["augmentation"], results["inference"]
    lines = [
        "# segkit benchmarks",
        "",
        f"Written by `make bench{' QUICK=1' if results['quick'] else ''}` on {results['date']}.",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, GPU: {m['gpu'] or 'none'}; load average at the start "
        f"{m['load_average_1_5_15_min']} (1/5/15 min: other jobs on the machine slow every figure below).",
        "Ratios are measured side by side in one run; absolute figures move with the machine's load.",
        "",
        f"## Sliding-window prediction ({inf['threads']} threads, {inf['device']})",
        "",
        f"A {inf['image'][1]}x{inf['image'][2]} 3-channel image, U-Net depth 4 base width 16 (channels_last), tiles {inf['tile']}, "
        f"{inf['batch_size']} windows per forward, Gaussian blending, stitched on the CPU. The plain forward runs the same "
        "non-overlapping tiles, stacked beforehand, with no stitching. Medians of interleaved rounds. Target: overhead at "
        "overlap 0 under 10 %.",
        "",
        "| | Mpx/s | s per image | windows |",
        "|---|---|---|---|",
        f"| plain forward, same tiles | {inf['plain_forward_mpx_per_s']} | {inf['plain_forward_s']} | {inf['windows_overlap_0']} |",
        f"| sliding window, overlap 0 | {inf['sliding_overlap_0_mpx_per_s']} | {inf['sliding_overlap_0_s']} | {inf['windows_overlap_0']} |",
        f"| sliding window, overlap 0.25 | {inf['sliding_overlap_0.25_mpx_per_s']} | {inf['sliding_overlap_0.25_s']} | {inf['windows_overlap_0.25']} |",
        "",
        f"Overhead at overlap 0: **{100 * inf['overhead_overlap_0']:.1f} %** end to end; stitching alone (a network that "
        f"costs nothing) {inf['stitch_only_overlap_0_s']} s per image = {100 * inf['stitch_only_overhead_overlap_0']:.1f} % "
        "of the plain forward.",
        "",
        "## Input pipeline: batched augmentation (one CPU thread)",
        "",
        f"A batch of {aug['batch'][0]} uint8 {aug['batch'][1]}x{aug['batch'][2]}x{aug['batch'][3]} images + masks, every transform on",
        "(flips, rot90, affine rotation 15 / shear 10 / scale 0.9-1.1, elastic alpha 10 sigma 10, brightness, contrast,",
        "gamma, noise, blur p=0.5). Median of repeated timings after warm-up. Target: >= 200 samples/s.",
        "",
        "| pipeline | samples/s | ms per batch |",
        "|---|---|---|",
        f"| segkit `BatchAugment` (batched tensor ops) | {aug['segkit_samples_per_s']} | {aug['segkit_ms_per_batch']} |",
        f"| torchvision v2, per sample, with ElasticTransform | {aug['torchvision_samples_per_s']} | {aug['torchvision_ms_per_batch']} |",
        f"| torchvision v2, per sample, without elastic | {aug['torchvision_no_elastic_samples_per_s']} | |",
        "",
        f"segkit / torchvision (with elastic): **{aug['speedup']}x**. The torchvision pipeline does less work (no gamma,",
        "noise or blur); only the cost is comparable.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="segkit benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (CI smoke; under 2 minutes)")
    args = parser.parse_args(argv)
    results = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        # inference first, on every core: the augmentation benchmark pins torch to one thread
        "inference": inference_bench.run(quick=args.quick, threads=os.cpu_count()),
        "augmentation": augment_bench.run(quick=args.quick),
    }
    (ROOT / "benchmarks" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (ROOT / "BENCHMARKS.md").write_text(render(results))
    print(render(results))
    return results


if __name__ == "__main__":
    main()
