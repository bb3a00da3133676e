"""``python -m benchmarks.gpu_check OUT_DIR [--cpu] [--quick] [--data-root PATH]`` (``make gpu-check OUT=...``):
one command that checks segkit on a GPU machine in at most 8 minutes and writes ``OUT_DIR/gpu_check.json`` and
``OUT_DIR/gpu_check.md``.

Steps, each guarded (a failing step is recorded with its error and the others still run) and each within its
share of the time budget (``--budget-s``, 480 s by default):

1. ``pytest -m gpu tests/gpu`` in a subprocess (junit XML into OUT_DIR): passed / failed / skipped;
2. framework overhead on the device: segkit's training loop (``benchmarks.train_bench.SegkitLoop``, a Trainer from
   ``build_trainer`` on the device) against a plain PyTorch loop on the same device (same network and initial
   weights, criterion, AdamW, channels_last, autocast + GradScaler for 16-mixed, autocast for bf16-mixed), for
   32-true, 16-mixed and bf16-mixed, U-Net and SegNet; ABAB rounds, medians of per-step times after warm-up,
   ``torch.cuda.synchronize()`` before every clock reading;
3. GPU utilisation (NVML, else ``nvidia-smi``) sampled during a longer segkit run and the same plain run;
4. segkit's input pipeline on the device (datamodule sampling + crops + collate + transfer + batched
   augmentation) in samples/s against the network's consumption (samples/s of the training step);
5. a short real training on the embedded default dataset (or darkfield with ``--data-root``) in 16-mixed and in
   32-true, same steps and seed: val mIoU of both and whether they agree within 0.02.

``--cpu`` runs the same steps on the CPU with tiny sizes (a dry run of the script; its figures mean nothing);
``--quick`` shortens every step. Without CUDA and without ``--cpu`` the script writes the machine section and
exits with status 2. Exit status 1: a step failed or a GPU test failed.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import importlib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 480.0
MIOU_TOLERANCE = 0.02
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
MODELS = ("unet", "segnet")
JUNIT = "gpu_pytest.xml"
PYTEST_LOG = "gpu_pytest.log"
#: share of the budget each step may use at most (the rest of a step's share passes to the later steps)
STEP_SHARES = {"pytest": 0.30, "overhead": 0.28, "utilization": 0.07, "pipeline": 0.07, "training": 0.28}

warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
warnings.filterwarnings("ignore", message=r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*")


def now() -> float:
    return time.perf_counter()


def median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


# =========================================================================================== settings
def settings(device: str, quick: bool) -> dict[str, Any]:
    """Sizes per mode. GPU: 512x512 batch 8 for the overhead rows; CPU (--cpu): tiny networks and images."""
    if device == "cuda":
        base = {"size": 512, "batch": 8, "steps": 30, "rounds": 3, "skip": 2, "model_overrides": [],
                "util_seconds": 8.0, "pipeline_batches": 60, "epochs": 20, "data": [], "models": MODELS}
        if quick:
            base |= {"size": 256, "steps": 10, "rounds": 2, "util_seconds": 3.0, "pipeline_batches": 20, "epochs": 3}
        return base
    tiny_data = ["data.synthetic.num_images=8", "data.synthetic.min_size=64", "data.synthetic.max_size=80",
                 "data.crop_size=64", "data.crops_per_image=1", "data.batch_size=4", "data.val_batch_size=2",
                 "data.val_fraction=0.25"]
    base = {"size": 64, "batch": 2, "steps": 5, "rounds": 2, "skip": 1, "model_overrides": ["model.base_width=4"],
            "util_seconds": 0.0, "pipeline_batches": 6, "epochs": 2, "data": tiny_data, "models": MODELS}
    if quick:
        base |= {"steps": 4, "rounds": 1, "pipeline_batches": 3, "epochs": 1}
    return base


# ============================================================================================ machine
def _version(dist: str, module: str | None = None) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
    try:
        return str(getattr(importlib.import_module(module or dist), "__version__", None))
    except Exception:  # noqa: BLE001 - not installed or broken: recorded as absent
        return None


def parse_smi_query(text: str) -> list[dict[str, str]]:
    """``nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader`` lines -> dicts."""
    rows = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            rows.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return rows


def gpu_driver() -> dict[str, Any]:
    """The NVIDIA driver version from NVML (``pynvml``, package nvidia-ml-py), else from nvidia-smi."""
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return {"driver": version.decode() if isinstance(version, bytes) else str(version), "source": "nvml"}
    except Exception as err:  # noqa: BLE001 - no NVML: try nvidia-smi
        nvml_error = f"{type(err).__name__}: {err}"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"driver": None, "source": None, "reason": f"no NVML ({nvml_error}) and no nvidia-smi on PATH"}
    try:
        out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        rows = parse_smi_query(out)
        return {"driver": rows[0]["driver"] if rows else None, "source": "nvidia-smi", "gpus": rows}
    except Exception as err:  # noqa: BLE001
        return {"driver": None, "source": None, "reason": f"nvidia-smi failed: {type(err).__name__}: {err}"}


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(), "device": device,
        "versions": {name: _version(dist, mod) for name, dist, mod in (
            ("pytorch-lightning", "pytorch-lightning", "pytorch_lightning"), ("torchmetrics", "torchmetrics", None),
            ("torchvision", "torchvision", None), ("hydra-core", "hydra-core", "hydra"), ("omegaconf", "omegaconf", None),
            ("segmentation-models-pytorch", "segmentation-models-pytorch", "segmentation_models_pytorch"),
            ("timm", "timm", None), ("onnx", "onnx", None), ("onnxruntime", "onnxruntime", None),
            ("numpy", "numpy", None), ("pytest", "pytest", None), ("nvidia-ml-py", "nvidia-ml-py", "pynvml"))},
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "count": torch.cuda.device_count(), "capability": f"{props.major}.{props.minor}",
                       "memory_gib": round(props.total_memory / 2**30, 1), "bf16_supported": torch.cuda.is_bf16_supported(),
                       "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}
        try:  # torch's legacy TF32 flags (they raise once the newer fp32_precision API has been used)
            info["gpu"] |= {"tf32_convolutions": bool(torch.backends.cudnn.allow_tf32),
                            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}
        except RuntimeError:
            pass
        info["driver"] = gpu_driver()
    else:
        info["driver"] = {"driver": None, "source": None, "reason": "no CUDA device visible to torch"}
    return info


# ========================================================================================= utilisation
def parse_smi_samples(text: str) -> list[tuple[float, float]]:
    """``nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader,nounits`` lines ->
    (unix time, utilisation %) pairs; lines that do not parse (``[N/A]``, headers) are skipped."""
    out = []
    for line in text.splitlines():
        stamp, sep, value = line.rpartition(",")
        if not sep:
            continue
        try:
            t = dt.datetime.strptime(stamp.strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            out.append((t, float(value.strip())))
        except ValueError:
            continue
    return out


def util_summary(samples: Sequence[tuple[float, float]], windows: Sequence[tuple[float, float]],
                 settle_s: float = 0.3) -> dict[str, Any]:
    """Mean and median utilisation (%) of the samples inside the timed windows (unix times), each window's first
    ``settle_s`` left out (NVML reports the busy share of a trailing period)."""
    inside = [u for t, u in samples if any(a + settle_s <= t <= b for a, b in windows)]
    if not inside:
        return {"mean": None, "median": None, "samples": 0, "reason": "no utilisation sample inside the timed steps"}
    return {"mean": round(statistics.fmean(inside), 1), "median": round(statistics.median(inside), 1), "samples": len(inside)}


def _nvml_index() -> int:
    """The NVML index of torch's cuda:0 (the first entry of CUDA_VISIBLE_DEVICES when it is a number)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


class UtilSampler:
    """GPU utilisation every ``interval_s``: NVML in a thread when ``pynvml`` imports, else an ``nvidia-smi -lms``
    subprocess. ``start()`` returns None, or why no sampling is possible; ``stop()`` returns (unix time, %)."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s, self.samples, self.source = interval_s, [], None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    def start(self) -> str | None:
        if not torch.cuda.is_available():
            return "no GPU: utilisation is a GPU figure (CPU run)"
        index = _nvml_index()
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.source = "nvml"

            def loop() -> None:
                while not self._stop.is_set():
                    self.samples.append((time.time(), float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)))
                    self._stop.wait(self.interval_s)

            self._thread = threading.Thread(target=loop, daemon=True)
            self._thread.start()
            return None
        except Exception as err:  # noqa: BLE001 - no NVML: nvidia-smi
            nvml_error = f"{type(err).__name__}: {err}"
        smi = shutil.which("nvidia-smi")
        if smi is None:
            return f"no NVML ({nvml_error}) and no nvidia-smi on PATH"
        self.source = "nvidia-smi"
        self._proc = subprocess.Popen([smi, "--query-gpu=timestamp,utilization.gpu", "--format=csv,noheader,nounits",
                                       "-lms", str(int(self.interval_s * 1000)), "-i", str(index)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return None

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._proc is not None:
            self._proc.terminate()
            try:
                out, _ = self._proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                out, _ = self._proc.communicate()
            self.samples = parse_smi_samples(out or "")
        return list(self.samples)


# ============================================================================================ pytest
def parse_junit(path: Path) -> dict[str, Any]:
    """Counts and failed tests' names from a pytest junit XML file."""
    root = ET.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures, skips = [], []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        failed, errored, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        if failed is not None:
            counts["failed"] += 1
            failures.append({"test": name, "message": (failed.get("message") or "").strip().splitlines()[0][:300] if failed.get("message") else ""})
        elif errored is not None:
            counts["errors"] += 1
            failures.append({"test": name, "message": (errored.get("message") or "").strip()[:300]})
        elif skipped is not None:
            counts["skipped"] += 1
            skips.append(skipped.get("message") or "")
        else:
            counts["passed"] += 1
    reasons = sorted(set(skips))
    return {**counts, "tests": sum(counts.values()), "failures": failures, "skip_reasons": reasons[:5]}


def run_pytest(out_dir: Path, timeout_s: float) -> dict[str, Any]:
    """``pytest -m gpu tests/gpu`` in a subprocess, junit XML and the console log into ``out_dir``."""
    junit = out_dir / JUNIT
    junit.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-q", "-rfEs", f"--junitxml={junit}", "tests/gpu"]
    t = now()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout_s, 10), check=False)
        log, returncode, timed_out = proc.stdout + proc.stderr, proc.returncode, False
    except subprocess.TimeoutExpired as err:
        log = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        returncode, timed_out = None, True
    (out_dir / PYTEST_LOG).write_text(log)
    result: dict[str, Any] = {"command": " ".join(cmd[1:]), "returncode": returncode, "timed_out": timed_out,
                              "seconds": round(now() - t, 1), "junit": JUNIT, "log": PYTEST_LOG}
    if junit.is_file():
        result |= parse_junit(junit)
    else:
        tail = log.strip().splitlines()[-3:]
        raise RuntimeError(f"pytest wrote no junit XML (return code {returncode}, timed out {timed_out}): {' | '.join(tail)}")
    if timed_out:
        raise RuntimeError(f"pytest ran past its {timeout_s:.0f} s share of the budget")
    return result


# ========================================================================================== training loops
def _sync(device: torch.device) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.type == "cuda" else None


def _timer_callback(device: torch.device):
    import pytorch_lightning as pl

    class SyncStepTimer(pl.Callback):
        """End of every training batch (after the optimiser step): device synchronised, then the clock read
        (``perf_counter`` for the step times, ``time.time`` for the utilisation windows)."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.walls: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.ends.append(now())
            self.walls.append(time.time())

    return SyncStepTimer()


class DeviceStep:
    """One training step of a plain PyTorch loop on ``device``: batch to the device (as Lightning moves it),
    normalise, channels_last, forward + loss under autocast (fp16 or bf16, when mixed), backward (through a
    GradScaler for 16-mixed), AdamW step. ``net`` and ``criterion`` are copies of what segkit trains."""

    DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}

    def __init__(self, net: torch.nn.Module, criterion: torch.nn.Module, mean: Sequence[float], std: Sequence[float],
                 device: torch.device, precision: str, lr: float = 2e-3) -> None:
        self.device = device
        self.net = net.to(device).to(memory_format=torch.channels_last).train()
        self.criterion = criterion.to(device)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=1e-4)
        self.dtype = self.DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        image = image.to(self.device, non_blocking=True)
        mask = mask.to(self.device, non_blocking=True)
        x = ((image.float() / 255.0 - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            loss = self.criterion(self.net(x), mask.long())
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        return loss.detach()


def plain_times(step: DeviceStep, loader, steps: int) -> tuple[list[float], list[float]]:
    """Clock readings (perf_counter, unix time) after each of ``steps`` plain steps over ``loader``."""
    sync = _sync(step.device)
    ends, walls = [], []
    for i, batch in enumerate(loader):
        if i >= steps:
            break
        step(batch["image"], batch["mask"])
        if sync is not None:
            sync()
        ends.append(now())
        walls.append(time.time())
    return ends, walls


def segkit_times(loop, device: torch.device) -> tuple[list[float], list[float]]:
    """One fit of a :class:`benchmarks.train_bench.SegkitLoop` (a fresh Trainer from segkit's ``build_trainer``)
    with a synchronising step timer."""
    from segkit.training.trainer import build_trainer

    trainer = build_trainer(loop.cfg)
    timer = _timer_callback(device)
    trainer.callbacks.append(timer)
    trainer.fit(loop.module, train_dataloaders=loop.loader, val_dataloaders=loop.val_loader)
    return timer.ends, timer.walls


def deltas(ends: Sequence[float], skip: int) -> list[float]:
    return [b - a for a, b in zip(ends[skip:], ends[skip + 1:], strict=False)]


class Cycled(torch.utils.data.Dataset):
    """``length`` items cycling over tensors in memory (a long run without that many images)."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, length: int) -> None:
        self.images, self.masks, self.length = images, masks, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = i % len(self.images)
        return {"image": self.images[j], "mask": self.masks[j]}


def _loop_pair(model: str, precision: str, device: torch.device, loader, steps: int, tmp: Path, extra: Sequence[str]):
    """segkit's loop and the plain loop with the same network, initial weights and criterion."""
    from benchmarks.common import data_stub
    from benchmarks.train_bench import SegkitLoop
    from segkit.training.precision import resolve_precision

    accelerator = "gpu" if device.type == "cuda" else "cpu"
    used = resolve_precision(precision, accelerator)[0]
    seg = SegkitLoop(tmp, model, loader, steps, [f"trainer.accelerator={accelerator}", f"trainer.precision={precision}", *extra])
    mean, std = data_stub().norm_mean_std
    plain = DeviceStep(copy.deepcopy(seg.module.net), copy.deepcopy(seg.module.criterion), mean, std, device, used)
    return seg, plain, used


def overhead(device: torch.device, s: dict, tmp: Path, deadline: float) -> dict[str, Any]:
    """images/s of segkit's loop vs the plain loop on the device, per model and precision (ABAB rounds)."""
    from benchmarks.common import synthetic_tensors, tensor_loader

    size, batch, steps, rounds, skip = s["size"], s["batch"], s["steps"], s["rounds"], s["skip"]
    images, masks = synthetic_tensors(batch * steps, size)
    loader = tensor_loader(images, masks, batch)
    rows, skipped = [], []
    for model in s["models"]:
        for precision in PRECISIONS:
            if now() > deadline:
                skipped.append(f"{model} {precision}")
                continue
            seg, plain, used = _loop_pair(model, precision, device, loader, steps, tmp / f"{model}-{precision}", s["model_overrides"])
            plain_times(plain, loader, min(3, steps))  # warm-up of the plain loop (the first fit warms segkit's)
            seg_t, plain_t = [], []
            for _ in range(rounds):
                seg_t += deltas(segkit_times(seg, device)[0], skip)
                plain_t += deltas(plain_times(plain, loader, steps)[0], skip)
            a, b = median(seg_t), median(plain_t)
            rows.append({"model": model, "precision": precision, "precision_used": used, "size": size, "batch": batch,
                         "segkit_step_ms": round(1e3 * a, 3), "plain_step_ms": round(1e3 * b, 3),
                         "segkit_images_per_s": round(batch / a, 2), "plain_images_per_s": round(batch / b, 2),
                         "ratio": round(b / a, 3), "steps_timed": len(seg_t)})
            del seg, plain
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"size": size, "batch": batch, "steps_per_round": steps, "rounds": rounds, "skipped_steps_per_round": skip,
            "rows": rows, "not_run_out_of_time": skipped, "model_overrides": list(s["model_overrides"]),
            "transfer": "both loops read the same uint8 batches from the same CPU DataLoader and move each to the device "
                        "(Lightning's batch transfer; .to(device, non_blocking=True) in the plain loop)"}


def utilization(device: torch.device, s: dict, tmp: Path, step_ms: float | None) -> dict[str, Any]:
    """GPU utilisation during a longer run of segkit's loop (U-Net, the precision ``auto`` resolves to) and during
    the plain loop on the same batches."""
    from benchmarks.common import synthetic_tensors
    from segkit.training.precision import resolve_precision

    accelerator = "gpu" if device.type == "cuda" else "cpu"
    precision = resolve_precision("auto", accelerator)[0]
    size, batch = s["size"], s["batch"]
    if not s["util_seconds"]:
        steps = 5  # CPU: the code path only
    elif step_ms:
        steps = max(20, min(2000, int(1e3 * s["util_seconds"] / step_ms)))
    else:  # no step time measured (the overhead step failed or was not run)
        steps = 200
    images, masks = synthetic_tensors(4 * batch, size, seed=3)
    loader = torch.utils.data.DataLoader(Cycled(images, masks, batch * steps), batch_size=batch, shuffle=False, drop_last=True)
    seg, plain, used = _loop_pair("unet", precision, device, loader, steps, tmp / "util", s["model_overrides"])
    sampler = UtilSampler()
    reason = sampler.start() if device.type == "cuda" else "no GPU: utilisation is a GPU figure (CPU run)"
    try:
        _, seg_walls = segkit_times(seg, device)
        _, plain_walls = plain_times(plain, loader, steps)
    finally:
        samples = sampler.stop()
    out: dict[str, Any] = {"model": "unet", "precision": used, "size": size, "batch": batch, "steps": steps,
                           "source": sampler.source if reason is None else None, "reason": reason,
                           "segkit_seconds": round(seg_walls[-1] - seg_walls[0], 2) if len(seg_walls) > 1 else None,
                           "plain_seconds": round(plain_walls[-1] - plain_walls[0], 2) if len(plain_walls) > 1 else None}
    if reason is not None:
        return out | {"segkit": None, "plain": None}
    skip = min(2, len(seg_walls) - 1)
    out["segkit"] = util_summary(samples, [(seg_walls[skip], seg_walls[-1])])
    out["plain"] = util_summary(samples, [(plain_walls[skip], plain_walls[-1])])
    out["all_samples"] = len(samples)
    return out


# ============================================================================================= pipeline
def _compose_run(tmp: Path, overrides: Sequence[str]):
    from benchmarks.common import compose

    return compose(tmp, ["callbacks.progress_bar=null", "trainer.enable_model_summary=false", *overrides])


def _data_overrides(s: dict, tmp: Path, data_root: str | None) -> list[str]:
    if data_root:
        return ["data=darkfield", f"data.root={data_root}", f"data.cache_dir={tmp / 'cache'}"]
    return list(s["data"])


def pipeline(device: torch.device, s: dict, tmp: Path, data_root: str | None, deadline: float) -> dict[str, Any]:
    """samples/s of segkit's train pipeline (sampling + crops + collate on the host, transfer, batched augmentation
    on the device) vs samples/s the training step consumes at that crop and batch size."""
    from hydra.utils import instantiate

    from benchmarks.augment_bench import SEGKIT_OPTIONS
    from segkit.data.augment import BatchAugment
    from segkit.training.fit import build_module
    from segkit.training.precision import resolve_precision

    cfg = _compose_run(tmp / "pipeline", _data_overrides(s, tmp, data_root) + s["model_overrides"])
    dm = instantiate(cfg.data, _convert_="all")
    t = now()
    dm.prepare()
    prepare_s = now() - t
    loader = dm.train_dataloader()
    sync = _sync(device) or (lambda: None)
    n_batches = s["pipeline_batches"]

    def batches():
        while True:
            yield from loader

    full = BatchAugment(**SEGKIT_OPTIONS, ignore_index=dm.ignore_index, value_range=255.0)
    variants: dict[str, Callable[[dict], None] | None] = {
        "host: sampling + crops + collate": None,
        "+ transfer to the device": lambda b: (b["image"].to(device, non_blocking=True), b["mask"].to(device, non_blocking=True)),
        "+ the config's augmentation on the device (data.augment)": lambda b: dm.augmenter(
            b["image"].to(device, non_blocking=True), b["mask"].to(device, non_blocking=True), generator=torch.Generator().manual_seed(7)),
        "+ every augmentation on the device (make bench's set)": lambda b: full(
            b["image"].to(device, non_blocking=True), b["mask"].to(device, non_blocking=True), generator=torch.Generator().manual_seed(7)),
    }
    rows = []
    for name, fn in variants.items():
        it = batches()
        for _ in range(2):  # warm-up (kernels, allocator)
            b = next(it)
            if fn is not None:
                fn(b)
        sync()
        t, n = now(), 0
        for _ in range(n_batches):
            b = next(it)
            if fn is not None:
                fn(b)
            n += len(b["image"])
            if now() > deadline:
                break
        sync()
        rows.append({"stage": name, "samples_per_s": round(n / (now() - t), 1), "samples": n})
    # the network's consumption: the plain training step on batches already on the device
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    precision = resolve_precision("auto", accelerator)[0]
    module = build_module(cfg, dm, None)
    step = DeviceStep(copy.deepcopy(module.net), copy.deepcopy(module.criterion), *dm.norm_mean_std, device, precision)
    b = next(batches())
    image, mask = b["image"].to(device), b["mask"].to(device)
    for _ in range(3):
        step(image, mask)
    sync()
    reps = max(3, n_batches // 3)
    t = now()
    for _ in range(reps):
        step(image, mask)
    sync()
    consumption = reps * len(image) / (now() - t)
    pipe = rows[-2]["samples_per_s"]
    return {"data": "darkfield at " + str(data_root) if data_root else "embedded synthetic darkfield",
            "train_images": len(dm.split["train"]), "crop_size": dm.crop_size, "batch": dm.batch_size,
            "augment": dict(dm.augment), "prepare_s": round(prepare_s, 2), "rows": rows,
            "model": str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1], "model_precision": precision,
            "model_samples_per_s": round(consumption, 1), "pipeline_samples_per_s": pipe,
            "ratio": round(pipe / consumption, 3), "ratio_every_augmentation": round(rows[-1]["samples_per_s"] / consumption, 3)}


# ============================================================================================= training
def max_time(seconds: int) -> str:
    """Lightning's ``trainer.max_time`` string ``DD:HH:MM:SS``."""
    seconds = int(seconds)
    return f"{seconds // 86400:02d}:{seconds % 86400 // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def short_training(device: torch.device, s: dict, tmp: Path, data_root: str | None, deadline: float,
                   epochs: int | None = None) -> dict[str, Any]:
    """The same short training (seed, epochs, data) in two precisions; val mIoU of both."""
    from omegaconf import open_dict

    from segkit.training.fit import train
    from segkit.training.precision import resolve_precision

    accelerator = "gpu" if device.type == "cuda" else "cpu"
    precisions = ("16-mixed", "32-true") if device.type == "cuda" else ("bf16-mixed", "32-true")
    epochs = epochs or (s["epochs"] if not data_root or device.type != "cuda" else 5)
    runs = []
    for i, precision in enumerate(precisions):
        left = deadline - now()
        if left < 15:
            runs.append({"requested": precision, "skipped": "out of time budget"})
            continue
        overrides = [*_data_overrides(s, tmp, data_root), *s["model_overrides"], "seed=42", "logger=csv",
                     f"trainer.accelerator={accelerator}", f"trainer.precision={precision}", f"trainer.max_epochs={epochs}",
                     "trainer.num_sanity_val_steps=0"]
        cfg = _compose_run(tmp / f"train-{precision}", overrides)
        with open_dict(cfg):  # a backstop: the run's share of what is left (both runs should end by their epochs)
            cfg.trainer.max_time = max_time(max(10, int(left / (len(precisions) - i) - 5)))
        t = now()
        metrics, objects = train(cfg)
        trainer = objects["trainer"]
        runs.append({"requested": precision, "used": str(trainer.precision),
                     "resolved": resolve_precision(precision, accelerator)[0],
                     "val_miou": round(float(metrics["val/miou"]), 4),
                     "val_iou": {k.removeprefix("val/iou/"): round(float(v), 4) for k, v in metrics.items() if k.startswith("val/iou/")},
                     "epochs_trained": int(objects["summary"]["epochs_trained"]), "global_step": int(trainer.global_step),
                     "wall_s": round(now() - t, 1)})
        del metrics, objects, trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out: dict[str, Any] = {"data": f"darkfield at {data_root}" if data_root else "embedded synthetic darkfield (what python -m segkit.train uses)",
                           "epochs": epochs, "seed": 42, "precisions": list(precisions), "runs": runs, "tolerance": MIOU_TOLERANCE,
                           "model_overrides": list(s["model_overrides"]), "data_overrides": _data_overrides(s, tmp, data_root)}
    return out | agreement(runs)


def agreement(runs: Sequence[dict], tolerance: float = MIOU_TOLERANCE) -> dict[str, Any]:
    """|val mIoU difference| of the two finished runs, whether it is within ``tolerance``, whether they trained the
    same number of steps, and a note when both ran in the same precision."""
    done = [r for r in runs if "val_miou" in r]
    if len(done) != 2:
        return {"miou_diff": None, "agree": None, "same_steps": None}
    diff = abs(done[0]["val_miou"] - done[1]["val_miou"])
    out: dict[str, Any] = {"miou_diff": round(diff, 4), "agree": diff <= tolerance,
                           "same_steps": done[0]["global_step"] == done[1]["global_step"]}
    if done[0]["used"] == done[1]["used"]:
        out["note"] = (f"the same precision twice: {done[0]['requested']} ran as {done[0]['used']} on this machine "
                       "(segkit.training.precision replaces mixed precision on a CPU without fast native bf16)")
    return out


# ============================================================================================== report
def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def _fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return lines


def _failed(r: dict, step: str) -> list[str]:
    info = r.get("steps", {}).get(step, {})
    if info.get("status") == "ok":
        return []
    if info.get("status") == "skipped":
        return [f"Not run: {info.get('error') or 'skipped'}.", ""]
    return [f"**This step failed**: `{info.get('error') or 'no result'}`.", ""]


def render_markdown(r: dict) -> str:
    """The Markdown report of a gpu_check JSON dict (sections read like the GPU rows of BENCHMARKS.md)."""
    m, mode = r.get("machine", {}), r.get("mode", {})
    gpu = m.get("gpu") or {}
    driver = m.get("driver") or {}
    versions = m.get("versions") or {}
    where = (f"{gpu.get('name')} ({gpu.get('memory_gib')} GiB, compute capability {gpu.get('capability')})" if gpu
             else "no GPU (CPU dry run: `--cpu`; its figures are not GPU measurements)")
    out = ["# segkit GPU check", "",
           f"Written by `make gpu-check` (`python -m benchmarks.gpu_check`) on {r.get('started_at')} in {_fmt(r.get('total_s'), 1)} s "
           f"(budget {_fmt(r.get('budget_s'), 0)} s: {'within' if r.get('within_budget') else 'OVER'}). "
           f"Device: {mode.get('device')}{', --quick' if mode.get('quick') else ''}.", "",
           f"Machine: {where}; driver {driver.get('driver') or 'n/a'} ({driver.get('source') or driver.get('reason') or 'n/a'}); "
           f"CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}; torch {m.get('torch')}, Lightning {versions.get('pytorch-lightning')}, "
           f"hydra-core {versions.get('hydra-core')}, omegaconf {versions.get('omegaconf')}, "
           f"segmentation-models-pytorch {versions.get('segmentation-models-pytorch')}, torchmetrics {versions.get('torchmetrics')}, "
           f"Python {m.get('python')}, {m.get('cpu_cores')} CPU cores.", ""]
    if gpu:
        out += [f"cuDNN benchmark mode {_fmt(gpu.get('cudnn_benchmark'))} (segkit and the plain loop alike), TF32 convolutions "
                f"{_fmt(gpu.get('tf32_convolutions'))}, TF32 matmuls {_fmt(gpu.get('tf32_matmul'))} (torch's defaults).", ""]
    if r.get("error"):
        out += [f"**{r['error']}**", ""]
    steps = r.get("steps", {})
    if steps:
        out += ["| step | status | seconds | error |", "|---|---|---|---|"]
        out += [f"| {k} | {v.get('status')} | {_fmt(v.get('seconds'), 1)} | {v.get('error') or ''} |" for k, v in steps.items()]
        out.append("")

    # 1. tests
    p = r.get("pytest") or {}
    out += ["## 1. GPU tests: `pytest -m gpu tests/gpu`", ""] + _failed(r, "pytest")
    if p:
        if p.get("tests") and p.get("skipped") == p.get("tests"):
            verdict = "not measured (every test skipped: no CUDA)"
        elif p.get("tests") and not (p.get("failed") or p.get("errors") or p.get("skipped")):
            verdict = "**met**"
        else:
            verdict = "**NOT met**"
        out += [f"Target: every test passes on the GPU (without CUDA each one skips). Result: {verdict}.", ""]
        out += _table(["tests", "passed", "failed", "errors", "skipped", "seconds"],
                      [[p.get("tests"), p.get("passed"), p.get("failed"), p.get("errors"), p.get("skipped"), p.get("seconds")]])
        out.append("")
        for f in p.get("failures", []):
            out.append(f"- FAILED `{f['test']}`: {f.get('message', '')}")
        if p.get("skip_reasons"):
            out.append(f"- skipped because: {'; '.join(p['skip_reasons'])}")
        out += ["", f"JUnit XML: `{p.get('junit')}`, console: `{p.get('log')}` (next to this file).", ""]

    # 2. overhead
    o = r.get("overhead") or {}
    out += ["## 2. Framework overhead on the device: segkit's training loop vs a plain PyTorch loop", ""] + _failed(r, "overhead")
    if o.get("rows"):
        out += ["segkit: `SegModule` driven by a Trainer from `segkit.training.trainer.build_trainer` (segkit's callbacks, "
                "progress bar, TensorBoard logger, per-step loss logging, confusion-matrix metrics) on the device, precision "
                "as asked. Plain: the same architecture and initial weights, the same criterion (CE + Dice), AdamW, channels_last, "
                "normalisation on the device; `torch.autocast` + `GradScaler` for 16-mixed, `torch.autocast` for bf16-mixed. "
                "Both loops read the same uint8 batches from the same CPU DataLoader and move each to the device (Lightning's "
                "batch transfer; `.to(device, non_blocking=True)` in the plain loop), so both pay the transfer. "
                "Precision (used): what `segkit.training.precision.resolve_precision` made of the request on this device; the "
                "plain loop runs the same. `torch.cuda.synchronize()` before every clock reading; per-step times from the end of "
                f"one optimiser step to the next, {o.get('rounds')} interleaved rounds (ABAB) of {o.get('steps_per_round')} steps, "
                f"the first {o.get('skipped_steps_per_round')} of each round dropped, medians.", ""]
        out += _table(["model", "precision (used)", "input", "segkit ms/step", "plain ms/step", "segkit images/s", "plain images/s",
                       "segkit / plain", "steps timed"],
                      [[x["model"], f"{x['precision']} ({x['precision_used']})", f"{x['batch']} x {x['size']}x{x['size']}",
                        x["segkit_step_ms"], x["plain_step_ms"], x["segkit_images_per_s"], x["plain_images_per_s"],
                        f"**{x['ratio']:.3f}**", x["steps_timed"]] for x in o["rows"]])
        out += ["", "segkit / plain: images/s of segkit's loop over the plain loop's (1.0 = no framework cost; below 1: "
                "the share of the plain loop's speed segkit keeps)."]
        if o.get("not_run_out_of_time"):
            out.append(f"Not run (time budget): {', '.join(o['not_run_out_of_time'])}.")
        out.append("")

    # 3. utilisation
    u = r.get("utilization") or {}
    out += ["## 3. GPU utilisation during training", ""] + _failed(r, "utilization")
    if u:
        if u.get("reason"):
            out += [f"Not measured: {u['reason']}.", ""]
        else:
            out += [f"Sampled with {u.get('source')} every 100 ms while segkit's loop (U-Net, {u.get('precision')}, "
                    f"{u.get('batch')} x {u.get('size')}x{u.get('size')}, {u.get('steps')} steps) and then the plain loop trained on "
                    "the same batches. Utilisation = the share of the sampling period in which a kernel ran on the GPU "
                    "(NVML's `utilization.gpu`, %), over the samples inside the timed steps.", ""]
            rows = [[name, (u.get(key) or {}).get("samples"), (u.get(key) or {}).get("mean"), (u.get(key) or {}).get("median"),
                     u.get(f"{key}_seconds")] for name, key in (("segkit", "segkit"), ("plain PyTorch", "plain"))]
            out += _table(["loop", "samples", "mean %", "median %", "seconds sampled"], rows) + [""]

    # 4. pipeline
    q = r.get("pipeline") or {}
    out += ["## 4. Input pipeline vs the network's consumption", ""] + _failed(r, "pipeline")
    if q.get("rows"):
        ok = q.get("ratio") is not None and q["ratio"] >= 1.0
        out += [f"Target: the pipeline delivers at least what the training step consumes (ratio >= 1). Result: "
                f"{'**met**' if ok else '**NOT met**'} ({_fmt(q.get('ratio'), 3)}).", "",
                f"Data: {q.get('data')} ({q.get('train_images')} train images, decoded once into memory in {q.get('prepare_s')} s), "
                f"crops {q.get('crop_size')}x{q.get('crop_size')}, batch {q.get('batch')}; the train loader of segkit's datamodule "
                "(random crops, collate) in this process, each batch moved to the device and augmented there as "
                "`SegDataModule.on_after_batch_transfer` does. Consumption: the plain training step of the data config's network "
                f"({q.get('model')}, {q.get('model_precision')}) on one batch already on the device. Last column: samples/s over the "
                "network's; above 1 the GPU never waits for data.", ""]
        out += _table(["stage (cumulative)", "samples/s", "/ network consumption"],
                      [[x["stage"], x["samples_per_s"], f"{x['samples_per_s'] / q['model_samples_per_s']:.2f}"] for x in q["rows"]]
                      + [["network consumption (training step)", q.get("model_samples_per_s"), "1.00"]])
        out.append("")

    # 5. training
    t = r.get("training") or {}
    out += ["## 5. Short training: mixed precision vs fp32", ""] + _failed(r, "training")
    if t.get("runs"):
        agree = t.get("agree")
        diff = "" if t.get("miou_diff") is None else f" (|difference| {t['miou_diff']:.4f})"
        out += [f"Target: val mIoU of the two runs within {t.get('tolerance')}. Result: "
                f"{'not measured' if agree is None else ('**met**' if agree else '**NOT met**')}{diff}.", "",
                f"Data: {t.get('data')}; the default U-Net and loss"
                f"{' with ' + ', '.join(t['model_overrides']) if t.get('model_overrides') else ''}, seed {t.get('seed')}, "
                f"{t.get('epochs')} epochs each, "
                "val mIoU of the best checkpoint re-evaluated on the whole validation images (pooled)."
                + (" The runs did NOT train the same number of steps (time budget)." if t.get("same_steps") is False else ""), ""]
        if t.get("note"):
            out += [f"Note: {t['note']}.", ""]
        out += _table(["precision asked", "used", "epochs", "optimiser steps", "val mIoU", "wall s"],
                      [[x.get("requested"), x.get("used", "n/a"), x.get("epochs_trained"), x.get("global_step"), f"{x['val_miou']:.4f}",
                        f"{x['wall_s']:.1f}"] if "val_miou" in x else [x.get("requested"), x.get("skipped", "n/a"), None, None, None, None]
                       for x in t["runs"]])
        out.append("")
    return "\n".join(out) + "\n"


def write_report(out_dir: Path, report: dict) -> None:
    clean = _clean(report)
    (out_dir / "gpu_check.json").write_text(json.dumps(clean, indent=1) + "\n")
    (out_dir / "gpu_check.md").write_text(render_markdown(clean))


# ================================================================================================= main
def run_step(report: dict, name: str, fn: Callable[[], Any], skip_reason: str | None = None) -> Any:
    """``report[name] = fn()``, with the step's status, seconds and (on failure) error in ``report["steps"]``."""
    if skip_reason:
        report["steps"][name] = {"status": "skipped", "seconds": 0.0, "error": skip_reason}
        return None
    t = now()
    print(f"gpu_check: {name} ...", flush=True)
    try:
        result = fn()
        report[name] = result
        report["steps"][name] = {"status": "ok", "seconds": round(now() - t, 1), "error": None}
        return result
    except Exception as err:  # noqa: BLE001 - one failing step must not stop the others
        report["steps"][name] = {"status": "failed", "seconds": round(now() - t, 1),
                                 "error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:400] if str(err).strip() else ''}"}
        report.setdefault("tracebacks", {})[name] = traceback.format_exc()[-4000:]
        print(f"gpu_check: {name} FAILED: {report['steps'][name]['error']}", flush=True)
        return None
    finally:
        print(f"gpu_check: {name} done in {now() - t:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder for gpu_check.json, gpu_check.md and the GPU tests' junit XML and log")
    parser.add_argument("--cpu", action="store_true", help="run every step on the CPU with tiny sizes (a dry run of the script)")
    parser.add_argument("--quick", action="store_true", help="fewer steps, rounds and epochs (a smoke test)")
    parser.add_argument("--data-root", default=None, help="darkfield data (images/, masks/) for the pipeline and the short training")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"time budget of the whole check (default {BUDGET_S:.0f} s)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each short training (default: 20 on a GPU, 5 with "
                        "--data-root; 2 with --cpu)")
    parser.add_argument("--only", default=None, help="comma-separated steps to run (default: all): " + ",".join(STEP_SHARES))
    args = parser.parse_args(argv)
    started = now()
    deadline_all = started + args.budget_s
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    report: dict[str, Any] = {"schema_version": 1, "kind": "gpu_check", "started_at": dt.datetime.now().isoformat(timespec="seconds"),
                              "budget_s": args.budget_s,
                              "mode": {"device": device.type, "cpu_flag": args.cpu, "quick": args.quick, "data_root": args.data_root},
                              "machine": machine_info(device.type), "steps": {}}
    if not cuda and not args.cpu:
        report["error"] = ("no CUDA device visible (torch.cuda.is_available() is False): run it on a GPU machine, "
                           "or pass --cpu for the CPU dry run")
        report["total_s"] = round(now() - started, 1)
        write_report(out_dir, report)
        print(f"gpu_check: {report['error']}", file=sys.stderr)
        return 2
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    only = set(args.only.split(",")) if args.only else set(STEP_SHARES)
    s = settings(device.type, args.quick)
    tmp = Path(tempfile.mkdtemp(prefix="segkit-gpu-check-"))

    def share(name: str) -> float:
        """This step's deadline: its share of the budget, never past the overall deadline minus the minimum the
        later steps need."""
        later = list(STEP_SHARES)[list(STEP_SHARES).index(name) + 1:]
        reserve = sum(10.0 for k in later if k in only)
        return min(now() + STEP_SHARES[name] * args.budget_s, deadline_all - reserve)

    def skip(name: str) -> str | None:
        if name not in only:
            return "not selected (--only)"
        if now() > deadline_all - 10:
            return "out of time budget"
        return None

    try:
        run_step(report, "pytest", lambda: run_pytest(out_dir, share("pytest") - now()), skip("pytest"))
        torch.manual_seed(0)
        result = run_step(report, "overhead", lambda: overhead(device, s, tmp / "overhead", share("overhead")), skip("overhead"))
        unet = [x for x in (result or {}).get("rows", []) if x["model"] == "unet"]
        step_ms = max((x["segkit_step_ms"] for x in unet), default=None)
        run_step(report, "utilization", lambda: utilization(device, s, tmp / "util", step_ms), skip("utilization"))
        run_step(report, "pipeline", lambda: pipeline(device, s, tmp / "pipeline", args.data_root, share("pipeline")), skip("pipeline"))
        run_step(report, "training", lambda: short_training(device, s, tmp / "training", args.data_root, share("training"), args.epochs),
                 skip("training"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        report["total_s"] = round(now() - started, 1)
        report["within_budget"] = report["total_s"] <= args.budget_s
        failed = [k for k, v in report["steps"].items() if v["status"] == "failed"]
        tests_failed = bool((report.get("pytest") or {}).get("failed") or (report.get("pytest") or {}).get("errors"))
        report["exit_status"] = 1 if failed or tests_failed else 0
        write_report(out_dir, report)
    print(f"gpu_check: wrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'} in {report['total_s']} s", flush=True)
    return report["exit_status"]


if __name__ == "__main__":
    sys.exit(main())
