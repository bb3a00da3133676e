"""Training-loop benchmarks: segkit's Lightning loop against a plain PyTorch loop (framework overhead),
achieved GFLOP/s against the machine's measured peak (hardware efficiency), channels_last,
per-step logging, torch.compile and mixed precision.

Every figure is a ratio of two timings taken side by side in this process, in interleaved rounds
(ABAB), as the median of per-step times after warm-up.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import open_dict
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    CLASSES,
    PlainStep,
    compose,
    data_stub,
    interleaved,
    median,
    now,
    per_step_usage,
    synthetic_tensors,
    tensor_loader,
    usage,
)
from segkit.evaluation.metrics import confusion_matrix
from segkit.training.fit import build_module
from segkit.training.module import TRAIN_METRIC_STRIDE, SegModule
from segkit.training.trainer import build_trainer

warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*")
warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")

MODELS = {"unet": ["model=unet"], "segnet": ["model=segnet"]}
SIZE, BATCH = 256, 8


class StepTimer(pl.Callback):
    """Records ``perf_counter`` (and page faults / system time) at the end of every training batch (after
    the optimiser step)."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.usage: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(now())
        self.usage.append(usage())


def step_deltas(ends: list[float], skip: int) -> list[float]:
    return [b - a for a, b in zip(ends[skip:], ends[skip + 1 :], strict=False)]


class SegkitLoop:
    """segkit's real training loop: ``SegModule`` driven by a Trainer from ``segkit.training.trainer.build_trainer``
    (segkit's callbacks, progress bar, TensorBoard logger in a temporary directory), on a DataLoader
    over tensors in memory (no crops or augmentation: the plain loop gets the same batches)."""

    def __init__(self, tmp: Path, model: str, loader, steps: int, overrides: list[str] | None = None) -> None:
        self.tmp, self.loader, self.steps = tmp, loader, steps
        self.cfg = compose(tmp, MODELS[model] + ["trainer.num_sanity_val_steps=0", "trainer.enable_model_summary=false",
                                                   "trainer.max_epochs=1", "trainer.limit_val_batches=1"] + list(overrides or []))
        with open_dict(self.cfg):
            self.cfg.trainer.limit_train_batches = steps
        self.module: SegModule = build_module(self.cfg, data_stub(), None)
        first = next(iter(loader))
        self.val_loader = tensor_loader(first["image"], first["mask"], 1, with_index=True)

    def run(self) -> list[float]:
        trainer = build_trainer(self.cfg)
        timer = StepTimer()
        trainer.callbacks.append(timer)
        trainer.fit(self.module, train_dataloaders=self.loader, val_dataloaders=self.val_loader)
        self.usage = timer.usage
        return timer.ends


class PairedPlain(pl.Callback):
    """Step-paired timing: after each segkit step (at ``on_train_batch_end``) one plain step runs on the same
    batch, so segkit step ``i`` and plain step ``i`` alternate within one fit. A slow drift of the machine's
    speed (other virtual machines on the host) then hits both alike, which separate rounds of several steps
    do not guarantee. Background threads of the segkit loop (TensorBoard's writer, the progress bar's
    refresh) run during both."""

    def __init__(self, plain: PlainStep) -> None:
        self.plain, self.segkit_s, self.plain_s, self._last = plain, [], [], None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        t = now()
        if self._last is not None:
            self.segkit_s.append(t - self._last)
        self.plain(batch["image"], batch["mask"])
        t2 = now()
        self.plain_s.append(t2 - t)
        self._last = now()


def paired(model: str, steps: int, size: int = SIZE, tmp: Path | None = None) -> dict:
    """segkit / plain from ``steps`` alternating steps in one fit (:class:`PairedPlain`): the median of the
    per-pair ratios and the ratio of the median times; the first pair is dropped (warm-up)."""
    tmp = Path(tmp or tempfile.mkdtemp(prefix="segkit-bench-"))
    images, masks = synthetic_tensors(BATCH * (steps + 1), size, seed=2)
    loader = tensor_loader(images, masks, BATCH)
    seg = SegkitLoop(tmp / f"paired-{model}", model, loader, steps + 1)
    mean, std = data_stub().norm_mean_std
    cb = PairedPlain(PlainStep(copy.deepcopy(seg.module.net), seg.module.criterion, mean, std))
    trainer = build_trainer(seg.cfg)
    trainer.callbacks.append(cb)
    trainer.fit(seg.module, train_dataloaders=loader, val_dataloaders=seg.val_loader)
    seg_s, plain_s = cb.segkit_s[1:], cb.plain_s[2 : 1 + len(cb.segkit_s)]  # plain i+1 follows segkit i+1
    pairs = [p / s for s, p in zip(seg_s, plain_s, strict=False)]
    return {"model": model, "size": size, "batch": BATCH, "pairs": len(pairs),
            "segkit_step_s": round(median(seg_s), 4), "plain_step_s": round(median(plain_s), 4),
            "ratio_of_medians": round(median(plain_s) / median(seg_s), 3), "median_pair_ratio": round(median(pairs), 3),
            "pair_ratio_quartiles": [round(q, 3) for q in _quartiles(pairs)]}


def _quartiles(xs: list[float]) -> tuple[float, float]:
    import statistics

    if len(xs) < 2:
        return (float("nan"), float("nan"))
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def plain_ends(step: PlainStep, loader, steps: int, marks: list | None = None) -> list[float]:
    ends = []
    for i, batch in enumerate(loader):
        if i >= steps:
            break
        step(batch["image"], batch["mask"])
        ends.append(now())
        if marks is not None:
            marks.append(usage())
    return ends


def overhead(model: str, rounds: int, steps: int, size: int = SIZE, skip: int = 1, tmp: Path | None = None) -> dict:
    """images/s of segkit's loop vs the plain loop (same architecture and initial weights, same criterion,
    same batches), ABAB rounds of ``steps`` steps, medians of per-step times after ``skip`` steps."""
    tmp = Path(tmp or tempfile.mkdtemp(prefix="segkit-bench-"))
    images, masks = synthetic_tensors(BATCH * steps, size)
    loader = tensor_loader(images, masks, BATCH)
    seg = SegkitLoop(tmp / model, model, loader, steps)
    mean, std = data_stub().norm_mean_std
    plain = PlainStep(copy.deepcopy(seg.module.net), seg.module.criterion, mean, std)
    seg_t, plain_t, round_ratios = [], [], []
    seg_use, plain_use = [], []
    for _ in range(rounds):
        st = step_deltas(seg.run(), skip)
        seg_use.append(per_step_usage(seg.usage, skip))
        marks: list = []
        pt = step_deltas(plain_ends(plain, loader, steps, marks), skip)
        plain_use.append(per_step_usage(marks, skip))
        seg_t += st
        plain_t += pt
        round_ratios.append(round(median(pt) / median(st), 3))
    s, p = median(seg_t), median(plain_t)
    return {"model": model, "size": size, "batch": BATCH, "segkit_step_s": round(s, 4), "plain_step_s": round(p, 4),
            "segkit_images_per_s": round(BATCH / s, 2), "plain_images_per_s": round(BATCH / p, 2),
            "ratio": round(p / s, 3), "round_ratios": round_ratios, "steps_timed": len(seg_t),
            "segkit_faults_per_step": round(median([u[0] for u in seg_use])),
            "plain_faults_per_step": round(median([u[0] for u in plain_use])),
            "segkit_sys_s_per_step": round(median([u[1] for u in seg_use]), 4),
            "plain_sys_s_per_step": round(median([u[1] for u in plain_use]), 4)}


class FreeNet(torch.nn.Module):
    """A near-free network (one 1x1 convolution) that leaves the framework's per-step cost visible."""

    output_stride = 1

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def framework_cost(rounds: int, steps: int, size: int = SIZE, tmp: Path | None = None) -> dict:
    """Milliseconds per step that segkit's loop adds to a plain loop, measured with a near-free network
    (so they are not lost in the noise of a 1-2 s step), with segkit's defaults and with per-step logging
    variants; plus the confusion-matrix update alone on a batch of real size."""
    tmp = Path(tmp or tempfile.mkdtemp(prefix="segkit-bench-"))
    images, masks = synthetic_tensors(BATCH * steps, size)
    loader = tensor_loader(images, masks, BATCH)
    variants = {
        "segkit defaults (log every 10 steps, progress bar)": [],
        "log every step": ["trainer.log_every_n_steps=1"],
        "no progress bar, log every 50 steps": ["callbacks.progress_bar=null", "++trainer.enable_progress_bar=false",
                                                "trainer.log_every_n_steps=50"],
    }
    loops = {}
    for i, (name, extra) in enumerate(variants.items()):
        loop = SegkitLoop(tmp / f"free{i}", "unet", loader, steps, extra)
        loop.module.net = FreeNet().to(memory_format=torch.channels_last)  # its stride (1) comes with it
        loops[name] = loop
    mean, std = data_stub().norm_mean_std
    first = next(iter(loops.values())).module
    plain = PlainStep(FreeNet().to(memory_format=torch.channels_last), first.criterion, mean, std)
    times: dict[str, list[float]] = {k: [] for k in [*loops, "plain"]}
    for _ in range(rounds):
        for name, loop in loops.items():
            times[name] += step_deltas(loop.run(), 2)
        times["plain"] += step_deltas(plain_ends(plain, loader, steps), 2)
    med = {k: median(v) for k, v in times.items()}
    # the metric work segkit does per step: argmax + confusion-matrix update, loss-metric update
    logits = torch.randn(BATCH, 3, size, size).contiguous(memory_format=torch.channels_last)
    target = masks[:BATCH].long()
    cm, lm = first.metrics["train_cm"], first.losses["train_loss"]

    k = TRAIN_METRIC_STRIDE

    def metric_update() -> None:  # what SegModule._step does for a training batch
        cm.update(logits[:, :, ::k, ::k].argmax(1), target[:, ::k, ::k])
        lm.update(torch.tensor(1.0), weight=BATCH)

    def metric_update_every_pixel() -> None:  # the same before training metrics were strided
        cm.update(logits.argmax(1), target)
        lm.update(torch.tensor(1.0), weight=BATCH)

    pred = logits.argmax(1)
    secs = interleaved({"m": metric_update, "m_full": metric_update_every_pixel, "argmax": lambda: logits.argmax(1),
                        "cm": lambda: confusion_matrix(pred, target, 3, 255),
                        "cm_before": lambda: confusion_matrix_before(pred, target, 3, 255)}, 2, 10)
    metric_s = secs["m"]
    return {
        "size": size, "batch": BATCH,
        "plain_free_step_ms": round(1e3 * med["plain"], 2),
        "added_ms_per_step": {k: round(1e3 * (med[k] - med["plain"]), 2) for k in loops},
        "metric_update_ms": round(1e3 * metric_s, 2),
        "metric_update_every_pixel_ms": round(1e3 * secs["m_full"], 2), "train_metric_stride": k,
        "argmax_ms": round(1e3 * secs["argmax"], 2),
        "confusion_matrix_ms": round(1e3 * secs["cm"], 2),
        "confusion_matrix_before_ms": round(1e3 * secs["cm_before"], 2),
    }


def confusion_matrix_before(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None) -> torch.Tensor:
    """segkit's confusion matrix before issue 6 (boolean-mask compaction), kept for its before/after row."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    idx = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


# ---------------------------------------------------------------------------------------- efficiency
#: (batch, channels in = out, size) of the 3x3 convolutions whose best forward rate is the machine's peak: the
#: U-Net's own widths and resolutions (16-256 channels), so that no single shape's cache behaviour sets it
PEAK_SHAPES = ((8, 32, 256), (8, 64, 256), (8, 128, 128), (8, 256, 64))


def peak_conv(batch: int = 8, channels: int = 64, size: int = 256) -> tuple[Callable[[], object], float]:
    """One peak candidate: a channels_last 3x3 convolution forward (fp32, no bias) and its FLOPs."""
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
    flops = 2 * batch * channels * channels * 9 * size * size

    def fn() -> None:
        with torch.no_grad():
            conv(x)

    return fn, float(flops)


def count_flops(step: PlainStep, image: torch.Tensor, mask: torch.Tensor, by_op: dict | None = None) -> float:
    """FLOPs of one training step; ``by_op`` (if given) receives the FLOPs per aten operator."""
    with FlopCounterMode(display=False) as counter:
        step(image, mask)
    if by_op is not None:
        by_op.update({str(op): float(n) for op, n in counter.get_flop_counts().get("Global", {}).items()})
    return float(counter.get_total_flops())


LOSS_OPS = {"_softmax", "_log_softmax", "_softmax_backward_data", "_log_softmax_backward_data", "nll_loss2d_forward",
            "nll_loss2d_backward", "nll_loss_forward", "nll_loss_backward", "scatter_", "one_hot", "where", "ne", "eq"}
OP_GROUPS = [
    ("convolution forward", lambda op: "conv" in op and "backward" not in op),
    ("convolution backward", lambda op: "conv" in op and "backward" in op),
    ("BatchNorm (forward + backward)", lambda op: "batch_norm" in op),
    ("ReLU (forward + backward)", lambda op: op in ("relu", "relu_", "threshold_backward", "clamp_min", "clamp_min_")),
    ("pooling / unpooling / upsampling / concat", lambda op: "pool" in op or "upsample" in op or op == "cat"),
    ("loss (softmax, CE, Dice)", lambda op: op in LOSS_OPS),
    ("optimizer (AdamW, foreach ops)", lambda op: op.startswith("_foreach") or "adam" in op),
    ("layout copies / fills", lambda op: op in ("copy_", "fill_", "clone", "contiguous", "zero_", "empty", "empty_like")),
]


def op_shares(step: PlainStep, image: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Share of one training step's CPU time per group of aten operators (self time, torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(image, mask)
    totals: dict[str, float] = {name: 0.0 for name, _ in OP_GROUPS}
    totals["other"] = 0.0
    for evt in prof.key_averages():
        if not evt.key.startswith("aten::"):
            continue
        op = evt.key[len("aten::"):]
        group = next((name for name, match in OP_GROUPS if match(op)), "other")
        totals[group] += evt.self_cpu_time_total
    total = sum(totals.values()) or 1.0
    return {k: round(v / total, 3) for k, v in totals.items()}


def efficiency(rounds: int, size: int = SIZE, compile_net: bool = True, tmp: Path | None = None) -> dict:
    """Achieved training GFLOP/s of the plain U-Net step (batch 8, channels_last) over the peak measured
    in the same rounds (ABAB), with variants: contiguous memory format, batch 16, torch.compile."""
    cfg = compose(Path(tmp or tempfile.mkdtemp(prefix="segkit-bench-")), MODELS["unet"])
    module = build_module(cfg, data_stub(), None)
    mean, std = data_stub().norm_mean_std
    images, masks = synthetic_tensors(2 * BATCH, size)
    b8, b16 = (images[:BATCH], masks[:BATCH]), (images, masks)
    base = copy.deepcopy(module.net)
    steps = {
        "channels_last, batch 8": (PlainStep(copy.deepcopy(base), module.criterion, mean, std), b8),
        "contiguous (NCHW), batch 8": (PlainStep(copy.deepcopy(base).to(memory_format=torch.contiguous_format),
                                                 module.criterion, mean, std, channels_last=False), b8),
        "channels_last, batch 16": (PlainStep(copy.deepcopy(base), module.criterion, mean, std), b16),
    }
    by_op: dict[str, float] = {}
    flops = {k: count_flops(st, *batch, by_op if k == "channels_last, batch 8" else None) for k, (st, batch) in steps.items()}
    compile_note, compile_s = None, None
    if compile_net:
        from segkit.training.module import compile_in_place

        net = copy.deepcopy(base)
        if compile_in_place(net):
            st = PlainStep(net, module.criterion, mean, std)
            t = now()
            st(*b8)
            st(*b8)  # the first steps compile forward and backward
            compile_s = round(now() - t, 1)
            steps["channels_last, batch 8, torch.compile"] = (st, b8)
            flops["channels_last, batch 8, torch.compile"] = flops["channels_last, batch 8"]
        else:
            compile_note = "no C++ compiler: torch.compile not measured"
    else:
        compile_note = "skipped in --quick (compilation takes minutes on 2 cores)"
    peaks = {f"{c}->{c} channels, {n} x {sz}x{sz}": peak_conv(n, c, sz) for n, c, sz in PEAK_SHAPES}
    fns = {**{k: fn for k, (fn, _) in peaks.items()}, **{k: (lambda st=st, b=b: st(*b)) for k, (st, b) in steps.items()}}
    secs = interleaved(fns, warmup=1, repeats=rounds)
    peak_rates = {k: peaks[k][1] / secs[k] for k in peaks}
    peak = max(peak_rates.values())
    rows = {k: {"step_s": round(secs[k], 4), "gflop_per_step": round(flops[k] / 1e9, 1),
                "gflop_per_s": round(flops[k] / secs[k] / 1e9, 2),
                "images_per_s": round(len(steps[k][1][0]) / secs[k], 2),
                "efficiency": round(flops[k] / secs[k] / peak, 3)} for k in steps}
    shares = op_shares(steps["channels_last, batch 8"][0], *b8)
    # convolution forward / backward rates: their FLOPs over their share of the measured step time
    step_s = secs["channels_last, batch 8"]
    conv_flops = {"forward": sum(v for k, v in by_op.items() if "convolution" in k and "backward" not in k),
                  "backward": sum(v for k, v in by_op.items() if "convolution_backward" in k)}
    conv_eff = {d: round(conv_flops[d] / max(shares[f"convolution {d}"] * step_s, 1e-9) / peak, 3) for d in conv_flops}
    # a step of nothing but its convolutions, at the rates they ran at in the step: the most any change outside
    # PyTorch's convolution kernels could reach against this peak
    conv_s = sum(shares[f"convolution {d}"] * step_s for d in conv_flops)
    conv_only = round(sum(conv_flops.values()) / max(conv_s, 1e-9) / peak, 3)
    return {"conv_only_ceiling": conv_only, "size": size, "peak_gflop_per_s": round(peak / 1e9, 2), "peak_candidates_gflop_per_s":
            {k: round(v / 1e9, 2) for k, v in peak_rates.items()}, "rows": rows, "op_shares": shares, "conv_efficiency": conv_eff,
            "conv_flop_share": round(sum(conv_flops.values()) / max(flops["channels_last, batch 8"], 1.0), 3),
            "compile_s": compile_s, "compile_note": compile_note, "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------- validation
def validation(rounds: int, size: int = 512, images: int = 4, tmp: Path | None = None) -> dict:
    """Whole-image validation through ``trainer.validate`` (SegModule.validation_step incl. metrics and
    segkit's callbacks) vs a plain ``no_grad`` forward of the same network on the same images."""
    tmp = Path(tmp or tempfile.mkdtemp(prefix="segkit-bench-"))
    x, m = synthetic_tensors(images, size, seed=1)
    loader = tensor_loader(x, m, 1, with_index=True)  # "index" + "size": SegModule keeps panel images
    seg = SegkitLoop(tmp / "val", "unet", loader, 1, ["trainer.limit_val_batches=null"])
    module = seg.module.eval()
    timer = ValTimer()

    def segkit_val() -> None:
        trainer = build_trainer(seg.cfg)
        trainer.callbacks.append(timer)
        trainer.validate(module, dataloaders=loader, verbose=False)

    def plain() -> None:
        with torch.no_grad():
            for batch in loader:
                module.net(((batch["image"].float() / 255 - module.norm_mean) / module.norm_std)
                           .contiguous(memory_format=torch.channels_last))

    secs = interleaved({"segkit": segkit_val, "plain": plain}, 1, rounds)
    # per-batch times exclude the Trainer's set-up, which whole validation epochs amortise
    per_image = median(timer.deltas)
    mpx = images * size * size / 1e6
    return {"images": images, "size": size, "plain_mpx_per_s": round(mpx / secs["plain"], 3),
            "segkit_mpx_per_s": round(size * size / 1e6 / per_image, 3),
            "segkit_incl_setup_mpx_per_s": round(mpx / secs["segkit"], 3),
            "ratio": round(secs["plain"] / images / per_image, 3)}


class ValTimer(pl.Callback):
    def __init__(self) -> None:
        self.deltas: list[float] = []
        self._t = 0.0

    def on_validation_batch_start(self, *args, **kwargs) -> None:
        self._t = now()

    def on_validation_batch_end(self, *args, **kwargs) -> None:
        self.deltas.append(now() - self._t)


# -------------------------------------------------------------------------------------- allocator
ROOT = Path(__file__).resolve().parent.parent


def allocator(rounds: int, steps: int, size: int, threads: int) -> dict:
    """glibc's default allocator vs segkit's tuned one: plain U-Net steps in fresh processes, alternating
    (default, tuned, default, tuned, ...), so load hits both alike."""
    runs: dict[str, list[dict]] = {"default": [], "tuned": []}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for _ in range(rounds):
        for mode in runs:
            out = subprocess.run([sys.executable, "-m", "benchmarks.alloc_probe", mode, str(steps),
                                  str(size), str(threads)], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    res = {"size": size, "batch": BATCH, "processes_per_mode": rounds, "steps_per_process": steps}
    for mode, rs in runs.items():
        res[mode] = {"step_s": round(median([t for r in rs for t in r["step_s"]]), 4),
                     "faults_per_step": round(median([r["faults_per_step"] for r in rs])),
                     "sys_s_per_step": round(median([r["sys_s_per_step"] for r in rs]), 4), "note": rs[0]["note"]}
    res["speedup"] = round(res["default"]["step_s"] / res["tuned"]["step_s"], 3)
    return res


# -------------------------------------------------------------------------------------- precision
def precision(repeats: int = 2, shapes: tuple[tuple[int, int], ...] = ((2, 64),)) -> dict:
    """U-Net training step in fp32 vs bf16 autocast on this CPU (small shapes), and what
    segkit.training.precision resolves ``auto`` and ``bf16-mixed`` to on this machine."""
    from segkit.models import UNet
    from segkit.training.losses import build_loss
    from segkit.training.precision import cpu_bf16_is_fast, resolve_precision

    rows = []
    for batch, size in shapes:
        torch.manual_seed(0)
        net = UNet(in_channels=3, num_classes=3, depth=4, base_width=16).to(memory_format=torch.channels_last)
        crit = build_loss(name="ce_dice", num_classes=3, ignore_index=255)
        step = PlainStep(net, crit, *data_stub().norm_mean_std)
        x, m = synthetic_tensors(batch, size)

        def bf16(step=step, x=x, m=m) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                step(x, m)

        secs = interleaved({"fp32": lambda step=step, x=x, m=m: step(x, m), "bf16": bf16}, 1, repeats)
        rows.append({"batch": batch, "size": size, "fp32_step_s": round(secs["fp32"], 4), "bf16_step_s": round(secs["bf16"], 4),
                     "bf16_over_fp32": round(secs["bf16"] / secs["fp32"], 2)})
    # what the plan (budget=...) chooses for trainer.precision=auto: the planner's own rule, on its own step measurement
    # at the largest shape
    from omegaconf import OmegaConf

    from segkit.planning.fingerprint import cpu_bf16_instructions
    from segkit.planning.planner import BF16_GAIN, measure_step_seconds, precision_item

    batch, size = shapes[-1]
    spec = {"_target_": "segkit.models.UNet", "in_channels": 3, "num_classes": 3, "depth": 4, "base_width": 16}
    step_s = {p: measure_step_seconds(spec, batch, size, 3, 3, steps=3, precision=p) for p in ("32-true", "bf16-mixed")}
    bf16_instructions = cpu_bf16_instructions()
    item = precision_item(OmegaConf.create({"model": spec, "trainer": {}}), {"channels": 3, "classes": list(CLASSES)},
                          {"cpu_bf16": bf16_instructions}, size, batch, lambda *_, precision: step_s[precision])
    plan = {"batch": batch, "size": size, "fp32_step_s": round(step_s["32-true"], 4), "bf16_step_s": round(step_s["bf16-mixed"], 4),
            "gain": round(step_s["32-true"] / step_s["bf16-mixed"], 2), "bf16_instructions": bf16_instructions,
            "choice": item.value, "min_gain": BF16_GAIN}
    return {"rows": rows, "cpu_bf16_is_fast": cpu_bf16_is_fast(), "plan": plan,
            "auto_resolves_to": resolve_precision("auto", "cpu")[0],
            "bf16_mixed_resolves_to": resolve_precision("bf16-mixed", "cpu")[0],
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run(quick: bool = False, tmp: Path | None = None) -> dict:
    """Every training-side section; ``quick``: tiny sizes, one round (a smoke test, not a measurement)."""
    tmp = Path(tmp or tempfile.mkdtemp(prefix="segkit-bench-"))
    size = 64 if quick else SIZE
    out: dict = {}
    t = now()
    out["overhead"] = [overhead("unet", 1 if quick else 3, 4 if quick else 6, size, tmp=tmp),
                       overhead("segnet", 1 if quick else 3, 4 if quick else 8, size, tmp=tmp)]
    out["paired"] = [paired("unet", 4 if quick else 16, size, tmp=tmp), paired("segnet", 4 if quick else 12, size, tmp=tmp)]
    out["framework_cost"] = framework_cost(1 if quick else 3, 6 if quick else 15, size, tmp=tmp)
    out["timing_s"] = {"overhead": round(now() - t, 1)}
    t = now()
    out["efficiency"] = efficiency(1 if quick else 3, size, compile_net=not quick, tmp=tmp)
    out["timing_s"]["efficiency"] = round(now() - t, 1)
    t = now()
    out["validation"] = validation(1 if quick else 3, 128 if quick else 512, 2 if quick else 4, tmp=tmp)
    out["precision"] = precision(1, ((2, 64),)) if quick else precision(2, ((2, 64), (8, 256)))
    out["timing_s"]["validation_precision"] = round(now() - t, 1)
    t = now()
    out["allocator"] = allocator(1 if quick else 3, 2 if quick else 5, size, torch.get_num_threads())
    out["timing_s"]["allocator"] = round(now() - t, 1)
    return out


if __name__ == "__main__":
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="segkit-bench-"))
    try:
        print(json.dumps(run(quick="--quick" in sys.argv, tmp=tmp), indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
