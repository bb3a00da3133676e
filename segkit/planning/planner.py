"""The plan: what segkit chooses from the data's fingerprint, the machine and the budget, with the reason for
each choice. A key the user set on the command line (or an ``experiment=`` file set) keeps the user's value,
and the plan says so. ``plan=off`` leaves the config as composed; ``plan=report`` records the plan without
applying it.

The rules, each tied to a measurement (RESULTS.md):
- ``loss.class_weights``: ``auto`` (median-frequency weights) when the rarest class covers < 2 % of the train
  pixels: darkfield's spirochaetes (1 %) were never predicted without them; the embedded default's 5 % class
  is learned without. Not for a thin class that is not rare: phase_bacteria's 1.8 px cell edges (9.2 % of the
  pixels) with median-frequency weights gave val mIoU 0.696 +- 0.005 against 0.706 +- 0.002 without, and the same
  edge IoU, 3 seeds each with bf16 and budget=15m (2026-12-07, RESULTS.md): tried, measured, not a rule.
- ``data.sampling``: ``class_balanced`` crops under the same condition (crop centres cycle through the
  classes, so the rare class is in a share of the crops instead of ~1 % of them).
With a ``budget`` (the choices that spend compute):
- ``data.crop_size``: the largest multiple of 32 that fits the median image's short side, at most 256 on a
  CPU (512 on a GPU), and at least twice the median diameter of the largest objects when the images allow.
- ``data.crops_per_image`` so that an epoch has at least 32 steps (validation cadence and
  class cycling need epochs of some length), with at most 8 crops of one image (or 4x a large image's area in
  crops: one 1040 x 800 image gets 48 crops of 256, three batches of 16) and at least one full batch; and ``model.base_width`` as the widest candidate whose measured
  step time still gives 3,000 optimizer steps in 85 % of the budget (darkfield: width 8 was at val mIoU 0.646
  after 1,920 steps and still climbing at 0.675 after 3,040; width 16 managed 300 in 45 minutes on one core and
  stalled).
- ``trainer.precision`` (on a CPU, when the config leaves it at ``auto`` and one process trains): the training
  step of the network as composed, measured in fp32 and in bf16 autocast at the planned batch and crop;
  ``bf16-mixed`` when that is at least 1.2x faster, else ``32-true``. Measured before the width, whose step times
  are then taken in the chosen precision. The AVX-512 BF16 development machines (AMD EPYC) ran U-Net steps 1.6-3.5x
  faster in bf16, the AVX2 ones 6-9x slower (BENCHMARKS.md, section 6). Validation, eval and predict stay fp32.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

RARE_SHARE = 0.02
MIN_STEPS = 3000
STEP_SHARE = 0.85
#: bf16-mixed is planned on a CPU when a measured training step is at least this much faster than fp32
BF16_GAIN = 1.2
WIDTHS = {"UNet": (8, 16, 32), "SegNet": (8, 16, 32), "FCN": (8, 16, 32)}


@dataclass
class PlanItem:
    key: str
    value: Any
    reason: str
    source: str = "plan"  # plan | user | experiment | default
    planned: Any = None  # what the plan would have chosen when the user's value won

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _floor32(x: float) -> int:
    return max(32, int(x) // 32 * 32)


def measure_step_seconds(model_spec: dict[str, Any], batch: int, crop: int, channels: int, num_classes: int,
                         steps: int = 2, precision: str = "32-true") -> float:
    """Median seconds of a training step (forward, cross-entropy, backward, AdamW) of the network on random
    data of the planned shape, on the CPU or the first GPU, after one warm-up step; ``precision="bf16-mixed"``
    runs the forward under bf16 autocast, as Lightning does."""
    import torch

    from segkit.models.network import build_network
    from segkit.training.losses import deep_supervision_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = build_network(model_spec, "the plan's candidate network").to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(batch, channels, crop, crop, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch, crop, crop), device=device)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            out = net(x)  # a list with deep supervision: every output's loss is part of the step
        outs = [o.float() for o in (out if isinstance(out, list) else [out])]
        loss = deep_supervision_loss(torch.nn.functional.cross_entropy, outs, y)[0]
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return float(sorted(times)[len(times) // 2])


def make_plan(fp: dict[str, Any], cfg: Any, machine: dict[str, Any], budget_s: float | None,
              measure=measure_step_seconds) -> list[PlanItem]:
    """The plan's choices for ``cfg`` (the composed training config) from the fingerprint ``fp``."""
    items: list[PlanItem] = []
    classes = fp["classes"]
    rare = min(classes, key=lambda c: c["pixel_share"])
    rare_text = f"rarest class '{rare['name']}' covers {100 * rare['pixel_share']:.2f} % of the train pixels"
    is_rare = rare["pixel_share"] < RARE_SHARE
    if cfg.loss.get("class_weights", "absent") != "absent" and cfg.loss.get("name") != "lovasz":  # Lovasz has no class weights
        items.append(PlanItem("loss.class_weights", "auto" if is_rare else None,
                              f"{rare_text} ({'<' if is_rare else '>='} {100 * RARE_SHARE:g} %): "
                              + ("median-frequency class weights" if is_rare else "no class weights needed")))
    items.append(PlanItem("data.sampling", "class_balanced" if is_rare else "uniform",
                          f"{rare_text}: " + ("crops centred on each class in turn" if is_rare else "uniform random crops")))
    if budget_s:
        items += _compute(fp, cfg, machine, budget_s, measure)
    return items


def _compute(fp: dict[str, Any], cfg: Any, machine: dict[str, Any], budget_s: float, measure) -> list[PlanItem]:
    """The choices that spend compute, made only for a budget: crop size, crops per image, network width."""
    items: list[PlanItem] = []
    classes = fp["classes"]
    gpu = bool(machine.get("gpus"))
    cap = 512 if gpu else 256
    short = min(fp["height"]["median"], fp["width"]["median"])
    crop = min(_floor32(short), cap)
    diameters = [math.sqrt(4 * c["median_area"] / math.pi) for c in classes[1:] if c.get("median_area")]
    why = f"median image {fp['height']['median']:.0f} x {fp['width']['median']:.0f} px; at most {cap} on a {'GPU' if gpu else 'CPU'}"
    if diameters and 2 * max(diameters) > crop and _floor32(short) > crop:
        crop = min(_floor32(short), _floor32(2 * max(diameters) + 31), 512)
        why += f"; raised to hold 2 x the largest objects' median diameter ({max(diameters):.0f} px)"
    items.append(PlanItem("data.crop_size", crop, why))
    batch = int(cfg.data.get("batch_size", 8))
    n = max(1, fp["num_images"])
    # crops of one image per epoch: at most 8, or 4x the median image's area in crops when the images are large
    # (one 1040 x 800 image: 51 crops of 256), and at least one full batch per epoch
    cover = max(8, math.ceil(4 * fp["height"]["median"] * fp["width"]["median"] / crop**2))
    cpi = max(min(cover, math.ceil(32 * batch / n)), math.ceil(batch / n))
    if n == 1 and cpi > batch:
        cpi -= cpi % batch  # one image: whole batches, no short last one
    steps = n * cpi // batch
    aim = ">= 32" if steps >= 32 else f"the aim is >= 32, but at most {cover} crops of one image per epoch"
    items.append(PlanItem("data.crops_per_image", cpi,
                          f"{fp['num_images']} train images x {cpi} crops / batch {batch} = {steps} steps per epoch ({aim})"))
    precision = precision_item(cfg, fp, machine, crop, batch, measure)
    if precision is not None:
        items.append(precision)
    items += _width(cfg, fp, budget_s, crop, batch, measure, precision.value if precision is not None else "32-true")
    return items


def _single_cpu_process(cfg: Any, machine: dict[str, Any]) -> bool:
    """The run trains in one process on the CPU (a precision measured in one process of several could differ
    from its siblings' choice)."""
    tr = cfg.get("trainer") or {}
    return (not machine.get("gpus") and str(tr.get("accelerator", "auto")) in ("auto", "cpu")
            and str(tr.get("devices", 1)) in ("1", "auto") and str(tr.get("num_nodes", 1)) == "1")


def precision_item(cfg: Any, fp: dict[str, Any], machine: dict[str, Any], crop: int, batch: int, measure) -> PlanItem | None:
    """``trainer.precision`` on a CPU: bf16-mixed where the network's measured training step is >= 1.2x faster
    (``measure(spec, batch, crop, channels, classes, precision=...)`` -> seconds per step). The bench records
    what this chooses."""
    from omegaconf import OmegaConf

    if str((cfg.get("trainer") or {}).get("precision", "auto")) != "auto" or not _single_cpu_process(cfg, machine):
        return None  # a GPU's auto is mixed precision already; a config that names a precision keeps it
    if not machine.get("cpu_bf16"):
        return PlanItem("trainer.precision", "32-true", "the CPU reports no bf16 instructions (avx512_bf16 / amx_bf16): fp32")
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    spec.pop("compile", None)
    args = (spec, batch, crop, fp["channels"], len(fp["classes"]))
    try:
        fp32, bf16 = measure(*args, precision="32-true"), measure(*args, precision="bf16-mixed")
    except RuntimeError as err:  # a layer without a bf16 kernel on this CPU
        return PlanItem("trainer.precision", "32-true", f"bf16 autocast failed on this network ({str(err).splitlines()[0][:120]}): fp32")
    gain = fp32 / bf16
    value = "bf16-mixed" if gain >= BF16_GAIN else "32-true"
    return PlanItem("trainer.precision", value,
                    f"training step measured at batch {batch}, crop {crop}: fp32 {fp32:.2f} s, bf16 autocast {bf16:.2f} s "
                    f"({gain:.2f}x); bf16-mixed when >= {BF16_GAIN:g}x faster (training steps only: validation, eval and "
                    "predict run in fp32)")


def _width(cfg: Any, fp: dict[str, Any], budget_s: float, crop: int, batch: int, measure,
           precision: str = "32-true") -> list[PlanItem]:
    from omegaconf import OmegaConf

    family = str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1]
    if family not in WIDTHS or "base_width" not in cfg.model:
        return []
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    spec.pop("compile", None)
    measured = []
    for width in WIDTHS[family]:  # narrow to wide: a wider network is only slower, so stop at the first too slow
        seconds = measure({**spec, "base_width": width}, batch, crop, fp["channels"], len(fp["classes"]), precision=precision)
        measured.append((width, seconds, int(STEP_SHARE * budget_s / seconds)))
        if measured[-1][2] < MIN_STEPS:
            break
    fitting = [m for m in measured if m[2] >= MIN_STEPS]
    width, seconds, steps = fitting[-1] if fitting else measured[0]
    table = ", ".join(f"width {w}: {s:.2f} s/step -> {n} steps" for w, s, n in measured)
    rule = f"the widest with >= {MIN_STEPS} steps in {100 * STEP_SHARE:.0f} % of the budget" if fitting else \
        f"none reaches {MIN_STEPS} steps: the narrowest"
    where = f"measured at batch {batch}, crop {crop}" + (" in bf16 autocast" if precision == "bf16-mixed" else "")
    return [PlanItem("model.base_width", width, f"{where}: {table}; {rule}")]


def given_keys(overrides: list[str]) -> set[str]:
    return {o.lstrip("+~").partition("=")[0] for o in overrides}


def resolve_sources(items: list[PlanItem], cfg: Any, overrides: list[str]) -> list[PlanItem]:
    """Mark the items whose key the user set (directly, or a group it belongs to was chosen with a value the
    plan cannot read: ``loss=dice`` keeps the dice config's own keys); an ``experiment=`` file's values win
    over the plan too."""
    from omegaconf import OmegaConf

    given = given_keys(overrides)
    experiment = any(k in ("experiment", "+experiment") for k in given)
    for item in items:
        group = item.key.split(".", 1)[0]
        user = item.key in given or (group == "loss" and "loss" in given)
        if user or experiment:
            current = OmegaConf.select(cfg, item.key, default=None)
            item.planned, item.value = item.value, current
            item.source = "user" if user else "experiment"
    return items


def apply_plan(items: list[PlanItem], cfg: Any, dm: Any | None = None) -> None:
    """Set the config keys (and the prepared datamodule's attributes) the plan chose."""
    from omegaconf import OmegaConf, open_dict

    with open_dict(cfg):
        for item in items:
            if item.source != "plan":
                continue
            OmegaConf.update(cfg, item.key, item.value, merge=False)
            if dm is not None and item.key.startswith("data."):
                setattr(dm, item.key.split(".", 1)[1], item.value)


def plan_table(items: list[PlanItem]) -> str:
    """The plan as a table: key, value, who chose it, why."""
    rows = [("key", "value", "chosen by", "reason")]
    for it in items:
        by = it.source if it.source == "plan" else f"{it.source} (plan: {'null' if it.planned is None else it.planned})"
        rows.append((it.key, "null" if it.value is None else str(it.value), by, it.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows]
    lines.insert(1, "-" * min(160, sum(widths) + 6 + 40))
    return "\n".join(lines)
