"""``python -m benchmarks.run [--quick]`` (``make bench``): run every benchmark in one process, record the
machine, and write ``BENCHMARKS.md`` and ``benchmarks/results.json``.

Each section reports ratios measured side by side in this run (absolute times on shared machines are
noisy), states its target and whether this run met it: framework overhead, hardware efficiency,
input pipeline, validation and inference, scaling and memory, mixed precision, and one before/after
row per optimisation. ``--quick`` (CI smoke test, about 5 minutes on 2 cores) runs everything on tiny sizes
with one round: it checks that nothing crashes, its figures are not measurements, and it never
fails on a timing. ``--out DIR`` writes ``DIR/BENCHMARKS.md`` and ``DIR/results.json`` instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import augment_bench, inference_bench, pipeline_bench, train_bench
from benchmarks.report import clean, render

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
    isa = None
    try:  # the vector extensions decide the convolution peak and whether bf16 pays (AVX-512 BF16 / AMX)
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
        isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    except (OSError, StopIteration):
        pass
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": isa, "torch": torch.__version__, "gpu": gpu, "python": platform.python_version(), "load_average_1_5_15_min": load}


def summary(results: dict) -> dict:
    """The figures with targets, of one full run (a line of ``history.jsonl``)."""
    tr = results["training"]
    ov = {row["model"]: row["median_pair_ratio"] for row in tr["paired"]} if tr.get("paired") else \
        {row["model"]: row["ratio"] for row in tr["overhead"]}
    rounds = {row["model"]: row["ratio"] for row in tr["overhead"]}
    ef = tr["efficiency"]
    base = ef["rows"]["channels_last, batch 8"]
    return {"date": results["date"], "total_s": results["total_s"], "load_average_1_5_15_min": results["machine"]["load_average_1_5_15_min"],
            "cpu": results["machine"]["cpu"], "overhead_unet": ov.get("unet"), "overhead_segnet": ov.get("segnet"),
            "peak_gflop_per_s": ef["peak_gflop_per_s"], "plain_efficiency": base["efficiency"],
            "segkit_efficiency": round(base["efficiency"] * ov.get("unet", float("nan")), 3),
            "allocator_speedup": (tr.get("allocator") or {}).get("speedup"),
            "rounds_unet": rounds.get("unet"), "rounds_segnet": rounds.get("segnet"), "isa": results["machine"].get("isa")}


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="segkit benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round: a CI smoke test (about 5 minutes on 2 cores)")
    parser.add_argument("--out", default=None, help="write BENCHMARKS.md and results.json into this directory "
                        "(default: BENCHMARKS.md at the repository root and benchmarks/results.json)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the training/inference sections (default: the cores this process may use)")
    parser.add_argument("--sections", default=None,
                        help="comma-separated sections to run (training,pipeline,inference,augmentation,large,processes,train_data,objects); the others "
                        "keep their figures from the existing results.json, each section with the date it was measured")
    args = parser.parse_args(argv)
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="segkit-bench-"))
    results: dict = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {**machine(), "threads": threads},
        "section_s": {},
        "sections": args.sections,
    }
    try:
        sections = [
            ("training", lambda: train_bench.run(quick=args.quick, tmp=tmp / "train")),
            ("pipeline", lambda: pipeline_bench.run(quick=args.quick, tmp=tmp / "pipeline")),
            ("inference", lambda: inference_bench.run(quick=args.quick, threads=threads)),
            # last: it pins torch to one thread
            ("augmentation", lambda: augment_bench.run(quick=args.quick)),
            # fresh processes per case (peak RSS of that case alone); before objects, whose thread pinning they would inherit
            ("large", lambda: __import__("benchmarks.large_bench", fromlist=["run"]).run(quick=args.quick, tmp=tmp / "large")),
            # segkit.predict devices=N: fresh processes (one device, N devices, one process on every core)
            ("processes", lambda: __import__("benchmarks.large_bench", fromlist=["processes_section"]).processes_section(
                quick=args.quick, tmp=tmp / "processes")),
            # training data read from large images: fresh processes per case (peak RSS of that case alone)
            ("train_data", lambda: __import__("benchmarks.train_data_bench", fromlist=["run"]).run(quick=args.quick, tmp=tmp / "train_data")),
            # numpy only, one core (it sets OMP/BLAS threads to 1 for what follows, so it comes after everything else)
            ("objects", lambda: __import__("benchmarks.objects_bench", fromlist=["run"]).run(quick=args.quick)),
        ]
        only = set(args.sections.split(",")) if args.sections else None
        previous = {}
        if only is not None:
            prev_path = Path(args.out) / "results.json" if args.out else ROOT / "benchmarks" / "results.json"
            previous = json.loads(prev_path.read_text()) if prev_path.is_file() else {}
        results["section_dates"] = dict(previous.get("section_dates") or {})
        for name, fn in sections:
            if only is not None and name not in only:
                if name in previous:
                    results[name] = previous[name]
                    results["section_s"][name] = (previous.get("section_s") or {}).get(name)
                    results["section_dates"].setdefault(name, previous.get("date"))
                continue
            results["section_dates"][name] = dt.datetime.now().isoformat(timespec="seconds")
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            t = time.perf_counter()
            results[name] = fn()
            results["section_s"][name] = round(time.perf_counter() - t, 1)
            print(f"segkit bench: {name} done in {results['section_s'][name]} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["total_s"] = round(time.perf_counter() - started, 1)
    md_path, json_path = (ROOT / "BENCHMARKS.md", ROOT / "benchmarks" / "results.json")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        md_path, json_path = out / "BENCHMARKS.md", out / "results.json"
    results = clean(results)
    history = json_path.parent / "history.jsonl"
    if not args.quick and not args.sections:  # one line per full run: BENCHMARKS.md shows the last three side by side
        with history.open("a") as fh:
            fh.write(json.dumps(summary(results), allow_nan=False) + "\n")
    results["history"] = read_history(history)[-3:]
    json_path.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    text = render(results)
    md_path.write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
