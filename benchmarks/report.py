"""``BENCHMARKS.md`` from the results of ``benchmarks.run``: one section per figure, each with its target
and whether this run met it."""

from __future__ import annotations

import math
from typing import Any

OVERHEAD_TARGET = 0.97
EFFICIENCY_TARGET = 0.75
PIPELINE_TARGET = 1.10
VALIDATION_TARGET = 0.90
SCALING_TARGET = 1.15
MEMORY_SLACK_MB = 64.0


def clean(obj: Any) -> Any:
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj


def met(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**NOT met**")


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def render(r: dict) -> str:
    m, tr, pl_, inf, aug = r["machine"], r["training"], r["pipeline"], r["inference"], r["augmentation"]
    quick = r["quick"]
    L: list[str] = [
        "# segkit benchmarks",
        "",
        (f"Written by `python -m benchmarks.run --sections {r['sections']}` on {r['date']} in {r['total_s']:.0f} s; the other "
         "sections are those of the earlier full run (dates below)." if r.get("sections") else
         f"Written by `make bench{' QUICK=1' if quick else ''}` (`python -m benchmarks.run{' --quick' if quick else ''}`) "
         f"on {r['date']} in {r['total_s']:.0f} s."),
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['threads']} torch threads used), vector extensions "
        f"{', '.join(m.get('isa') or []) or 'unknown'}, torch {m['torch']}, GPU: {m['gpu'] or 'none'}; "
        f"load average at the start {m['load_average_1_5_15_min']} (1/5/15 min: other jobs on the machine slow every figure below).",
        "Every figure is a ratio of timings taken side by side in this run, interleaved (ABAB), medians of repeated timings "
        "after warm-up; absolute figures move with the machine's load.",
    ]
    if quick:
        L += ["", "**--quick run: tiny sizes and one round, a smoke test. Its figures are not measurements and the "
              "met / NOT met verdicts below mean nothing.**"]
    L += ["", "Section times (s): " + ", ".join(f"{k} {v}" for k, v in r["section_s"].items()), ""]
    dates = r.get("section_dates") or {}
    if len(set(dates.values())) > 1:  # a `--sections` run: the others are from the earlier run named
        L += ["Measured at: " + ", ".join(f"{k} {v}" for k, v in dates.items())
              + " (a `--sections` run re-measured only some sections, on a machine of the kind named above).", ""]

    hist = r.get("history") or []
    if hist:
        L += ["## Consecutive full runs", "",
              f"The last {len(hist)} full runs of `make bench` on this machine (`benchmarks/history.jsonl`; this run last). "
              f"Targets: segkit / plain >= {OVERHEAD_TARGET} for both networks, segkit's U-Net training >= {EFFICIENCY_TARGET} of "
              "the measured peak.", "",
              "| run | vector extensions | load at start | U-Net segkit / plain (paired; rounds) | SegNet segkit / plain (paired; rounds) | peak GFLOP/s | plain / peak | segkit / peak | allocator speed-up |",
              "|---|---|---|---|---|---|---|---|---|"]
        for h in hist:
            L.append(f"| {h['date']} | {', '.join(h.get('isa') or []) or '?'} | {h['load_average_1_5_15_min']} | {h['overhead_unet']}; {h.get('rounds_unet')} | "
                     f"{h['overhead_segnet']}; {h.get('rounds_segnet')} | {h['peak_gflop_per_s']} | {h['plain_efficiency']} | "
                     f"{h['segkit_efficiency']} | {h.get('allocator_speedup')} |")
        ok_all = all((h["overhead_unet"] or 0) >= OVERHEAD_TARGET and (h["overhead_segnet"] or 0) >= OVERHEAD_TARGET
                     for h in hist)
        ok_eff = all((h["segkit_efficiency"] or 0) >= EFFICIENCY_TARGET for h in hist)
        L += ["", f"Overhead target in all {len(hist)}: {met(ok_all)}; efficiency target in all {len(hist)}: {met(ok_eff)}.", ""]

    # ------------------------------------------------------------------ 1 overhead
    ov, fc = tr["overhead"], tr["framework_cost"]
    pairs = tr.get("paired") or []
    ok = all(row["median_pair_ratio"] >= OVERHEAD_TARGET for row in pairs) if pairs else all(row["ratio"] >= OVERHEAD_TARGET for row in ov)
    L += [
        "## 1. Framework overhead: segkit's training loop vs a plain PyTorch loop",
        "",
        f"Target: segkit images/s >= {OVERHEAD_TARGET} x the plain loop's, by the step-paired measurement. Result: {met(ok)}.",
        "",
        "Step-paired: one fit of segkit's loop in which, after every segkit step, one plain step runs on the same batch "
        "(`benchmarks.train_bench.PairedPlain`), so the two alternate step by step and a drift of the machine's speed "
        "(other virtual machines on the host: consecutive steps here differ by up to 30 %) hits both alike. The ratio is "
        "the median of the per-pair ratios (first pair dropped), with their quartiles; background threads of segkit's loop "
        "(TensorBoard's writer, the progress bar's 1 Hz refresh) run during both halves.",
        "",
        "| model | input | segkit s/step | plain s/step | segkit / plain (median of pairs) | quartiles | ratio of medians | pairs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in pairs:
        q = row["pair_ratio_quartiles"]
        L.append(f"| {row['model']} | {row['batch']} x {row['size']}x{row['size']} | {row['segkit_step_s']} | {row['plain_step_s']} | "
                 f"**{row['median_pair_ratio']}** | {q[0]} - {q[1]} | {row['ratio_of_medians']} | {row['pairs']} |")
    L += [
        "",
        "Separate rounds (ABAB: a fit of segkit's loop, then the plain loop alone, repeated), as measured before this "
        "issue; more exposed to the machine's drift between rounds, but it also sees anything segkit's loop does "
        "outside its steps:",
        "",
        "segkit: `SegModule` driven by a Trainer from `segkit.training.trainer.build_trainer` (segkit's callbacks, progress bar, "
        "TensorBoard logger in a temporary directory, per-step loss logging, confusion-matrix metrics). Plain: the same "
        "architecture and initial weights, the same criterion (CE + Dice), AdamW, channels_last, normalisation on the "
        "fly. Both read the same in-memory uint8 batches through the same DataLoader (no crops, no augmentation). "
        "Per-step times from the end of one optimiser step to the next, the first of each round dropped; the ratio is "
        "that of the medians over all rounds, and each round's own ratio is listed. Page faults and system seconds per "
        "step are the process's own counts over each round's timed steps (medians over rounds); both loops run in one "
        "process, after segkit's allocator tuning (`cpu_allocator=tuned`, section 7).",
        "",
        "| model | input | segkit images/s | plain images/s | segkit / plain | per round | page faults / step (segkit, plain) | system s / step (segkit, plain) | steps timed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ov:
        rr = ", ".join(str(x) for x in row.get("round_ratios", []))
        L.append(f"| {row['model']} | {row['batch']} x {row['size']}x{row['size']} | {row['segkit_images_per_s']} | "
                 f"{row['plain_images_per_s']} | **{row['ratio']}** | {rr} | {row.get('segkit_faults_per_step')}, "
                 f"{row.get('plain_faults_per_step')} | {row.get('segkit_sys_s_per_step')}, {row.get('plain_sys_s_per_step')} | "
                 f"{row['steps_timed']} |")
    unet_step_ms = 1e3 * ov[0]["plain_step_s"]
    L += [
        "",
        "Where segkit's extra time goes, load-robustly: the same loops with a near-free network (one 1x1 convolution), "
        f"so that the framework's per-step cost is not lost in the noise of a {unet_step_ms / 1e3:.1f} s step. "
        f"Plain loop with that network: {fc['plain_free_step_ms']} ms per step (loss, backward, AdamW).",
        "",
        "| segkit configuration | ms added per step | share of a U-Net step |",
        "|---|---|---|",
    ]
    for name, ms in fc["added_ms_per_step"].items():
        L.append(f"| {name} | {ms} | {_pct(ms / unet_step_ms)} |")
    L += [
        f"| of which the training-metric update (argmax + confusion matrix on every {fc.get('train_metric_stride', 1)}nd "
        f"pixel in each direction, loss metric; timed alone) | {fc['metric_update_ms']} | {_pct(fc['metric_update_ms'] / unet_step_ms)} |",
        f"| ... the same on every pixel (segkit before this run's changes) | {fc.get('metric_update_every_pixel_ms')} | "
        f"{_pct(fc.get('metric_update_every_pixel_ms', 0) / unet_step_ms)} |",
        f"| ... argmax alone / confusion matrix alone (every pixel) | {fc['argmax_ms']} / {fc['confusion_matrix_ms']} | |",
        "",
        "The confusion-matrix update is legitimate per-step work (training metrics); issue 6 made it "
        f"{fc['confusion_matrix_before_ms'] / max(fc['confusion_matrix_ms'], 1e-9):.1f}x cheaper "
        f"({fc['confusion_matrix_before_ms']} -> {fc['confusion_matrix_ms']} ms per step, see section 7). The rest of the "
        "added time is Lightning's loop, hooks, logging and progress bar.",
        "",
    ]

    # ------------------------------------------------------------------ 2 efficiency
    ef = tr["efficiency"]
    rows = ef["rows"]
    base = rows["channels_last, batch 8"]
    seg_eff = base["efficiency"] * ov[0]["ratio"]
    L += [
        "## 2. Hardware efficiency: achieved training GFLOP/s / measured peak",
        "",
        f"Target: >= {EFFICIENCY_TARGET} of peak for the U-Net training step. Result: plain loop {base['efficiency']}, "
        f"segkit loop (x the overhead ratio) {seg_eff:.3f}: {met(seg_eff >= EFFICIENCY_TARGET)}.",
        "",
        "Peak: the fastest of four channels_last 3x3 convolution forwards (fp32, no bias; the U-Net's own widths and "
        "resolutions, so that no single shape's cache behaviour sets it), timed in the same rounds as the training steps: "
        f"**{ef['peak_gflop_per_s']} GFLOP/s** on {ef['threads']} threads ("
        + ", ".join(f"{k}: {v}" for k, v in ef.get("peak_candidates_gflop_per_s", {}).items()) + " GFLOP/s). "
        "FLOPs of one forward + backward counted with "
        f"`torch.utils.flop_counter.FlopCounterMode`. U-Net depth 4 base 16, {ef['size']}x{ef['size']}, CE + Dice, AdamW.",
        "",
        "| plain training step | GFLOP/step | s/step | images/s | GFLOP/s | / peak |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        L.append(f"| {name} | {row['gflop_per_step']} | {row['step_s']} | {row['images_per_s']} | {row['gflop_per_s']} | "
                 f"**{row['efficiency']}** |")
    if ef.get("compile_s") is not None:
        L += ["", f"torch.compile (`model.compile=true`): the first two steps (compilation of forward and backward) took "
              f"{ef['compile_s']} s."]
    elif ef.get("compile_note"):
        L += ["", f"torch.compile: {ef['compile_note']}."]
    L += ["", "Share of one step's CPU time by operator group (torch.profiler, self time, channels_last batch 8):", "",
          "| operators | share |", "|---|---|"]
    for name, share in ef["op_shares"].items():
        L.append(f"| {name} | {_pct(share)} |")
    L += [
        "",
        f"Convolutions carry {_pct(ef['conv_flop_share'])} of the counted FLOPs (FlopCounterMode counts convolutions and "
        "matrix products; elementwise work is not counted, as in the peak). Their rate over the peak, from their FLOPs and "
        f"their share of the step: forward {ef['conv_efficiency']['forward']}, backward (input and weight gradients) "
        f"{ef['conv_efficiency']['backward']}. The rest of the step (BatchNorm and ReLU unfused and memory-bound at full "
        "resolution, pooling, concatenation, layout copies, loss, AdamW) does almost no FLOPs, so every second it takes "
        "lowers the efficiency. Both sit in PyTorch's kernels, not in segkit's loop (section 1).",
        "",
    ]
    if ef.get("conv_only_ceiling") is not None:
        ceiling = ef["conv_only_ceiling"]
        L += [f"A step made of nothing but its convolutions, at the rates they ran at here, would reach **{ceiling}** of the peak "
              f"({_pct(ef['op_shares']['convolution forward'] + ef['op_shares']['convolution backward'])} of the step's time is "
              "convolutions). "
              + ("That is below the 0.75 target: no change outside PyTorch's convolution kernels (oneDNN on this CPU) can "
                 "reach it against a forward-convolution peak." if ceiling < 0.75 else
                 "The target is within reach of the convolution kernels; the gap is the rest of the step."), ""]

    # ------------------------------------------------------------------ 3 pipeline
    df = pl_["darkfield"]
    L += ["## 3. Input pipeline: a darkfield epoch vs the same steps on tensors in memory", ""]
    if "skipped" in df:
        L += [f"Target: epoch ratio <= {PIPELINE_TARGET}; pipeline samples/s >= the model's. Result: not measured: "
              f"{df['skipped']}.", ""]
    else:
        ok_ratio = df["ratio"] <= PIPELINE_TARGET
        ok_rate = df["pipeline_samples_per_s"] >= df["model_samples_per_s"]
        L += [
            f"Target: darkfield epoch / in-memory epoch <= {PIPELINE_TARGET}: {df['ratio']}, {met(ok_ratio)}; the pipeline "
            f"alone faster than the training step consumes: {df['pipeline_samples_per_s']} vs {df['model_samples_per_s']} "
            f"samples/s, {met(ok_rate)}.",
            "",
            f"`conf/data/darkfield.yaml` through `SegDataModule` ({df['images']['train']} train images, random "
            f"{df['crop_size']}x{df['crop_size']} crops, batch {df['batch']}, {df['steps_per_epoch']} steps per epoch, "
            "every augmentation on: flips, rot90, affine, elastic, brightness, contrast, gamma, noise, blur) vs the same "
            f"number of steps on uint8 tensors already in memory, U-Net, segkit's loop; {df['rounds']} interleaved "
            "round(s), epoch = first batch to last optimiser step.",
            "",
            "| | value |",
            "|---|---|",
            f"| darkfield epoch | {df['darkfield_epoch_s']} s |",
            f"| in-memory epoch, same steps | {df['in_memory_epoch_s']} s |",
            f"| ratio | **{df['ratio']}** |",
            f"| ratio of median per-step times (less sensitive to other jobs' load) | {df.get('step_ratio')} |",
            f"| pipeline alone (sampling + crops + collate + batched augmentation, main process) | {df['pipeline_samples_per_s']} samples/s |",
            f"| loader alone (sampling + crops + collate) | {df['loader_only_samples_per_s']} samples/s |",
            f"| training step consumption | {df['model_samples_per_s']} samples/s |",
            f"| `prepare()` once per run (decode every PNG, validate, split, statistics) | {df['prepare_s']} s |",
            "",
        ]

    # ------------------------------------------------------------------ 4 validation + inference
    va = tr["validation"]
    L += [
        "## 4. Validation and inference",
        "",
        f"Target (set here): segkit validation >= {VALIDATION_TARGET} x a plain forward's Mpx/s: {va['ratio']}, "
        f"{met(va['ratio'] >= VALIDATION_TARGET)}. Sliding window at overlap 0: overhead under 10 %: "
        f"{_pct(inf['overhead_overlap_0'])}, {met(inf['overhead_overlap_0'] < 0.10)}.",
        "",
        f"Whole-image validation: `trainer.validate` on {va['images']} images of {va['size']}x{va['size']} "
        "(`SegModule.validation_step`: normalise, forward, loss, argmax, confusion matrix, loss metric, panel images; "
        "segkit's callbacks) vs `net(x)` under `no_grad` on the same images, per-batch medians.",
        "",
        "| | Mpx/s |",
        "|---|---|",
        f"| plain forward | {va['plain_mpx_per_s']} |",
        f"| segkit validation, per batch | {va['segkit_mpx_per_s']} |",
        f"| segkit validation incl. Trainer set-up, {va['images']} images | {va['segkit_incl_setup_mpx_per_s']} |",
        "",
        f"Sliding-window prediction ({inf['threads']} threads): a {inf['image'][1]}x{inf['image'][2]} 3-channel image, "
        f"U-Net depth 4 base width 16 (channels_last), tiles {inf['tile']}, {inf['batch_size']} windows per forward, "
        "Gaussian blending, stitched on the CPU. The plain forward runs the same non-overlapping tiles, stacked "
        "beforehand, with no stitching (`benchmarks/inference_bench.py`).",
        "",
        "| | Mpx/s | s per image | windows |",
        "|---|---|---|---|",
        f"| plain forward, same tiles | {inf['plain_forward_mpx_per_s']} | {inf['plain_forward_s']} | {inf['windows_overlap_0']} |",
        f"| sliding window, overlap 0 | {inf['sliding_overlap_0_mpx_per_s']} | {inf['sliding_overlap_0_s']} | {inf['windows_overlap_0']} |",
        f"| sliding window, overlap 0.25 | {inf['sliding_overlap_0.25_mpx_per_s']} | {inf['sliding_overlap_0.25_s']} | {inf['windows_overlap_0.25']} |",
        "",
        f"Stitching alone (a network that costs nothing): {inf['stitch_only_overlap_0_s']} s per image = "
        f"{_pct(inf['stitch_only_overhead_overlap_0'])} of the plain forward.",
        "",
    ]

    # ------------------------------------------------------------------ 5 scaling + memory
    sc, mem = pl_["scaling"], pl_["memory"]
    spread = [max(x["s_per_mpx"] for x in rows_) / min(x["s_per_mpx"] for x in rows_) for rows_ in (sc["images"], sc["crop"])]
    pred = [p for p in mem["predict"] if "extra_mb" in p]
    mem_ok = None
    if len(pred) == 2:
        mem_ok = pred[1]["extra_mb"] <= pred[0]["extra_mb"] * 1.1 + MEMORY_SLACK_MB
    L += [
        "## 5. Scaling and memory",
        "",
        f"Targets (set here): seconds per megapixel flat, max / min <= {SCALING_TARGET}: vs images {spread[0]:.2f} "
        f"{met(spread[0] <= SCALING_TARGET)}, vs crop size {spread[1]:.2f} {met(spread[1] <= SCALING_TARGET)}; "
        f"sliding-window memory beyond the stitched output does not grow with the image: {met(mem_ok)}.",
        "",
        "segkit's loop (U-Net, in-memory tensors), one epoch, after a warm-up epoch:",
        "",
        "| images | crop | batch | epoch s | s per Mpx |",
        "|---|---|---|---|---|",
    ]
    for x in sc["images"]:
        L.append(f"| {x['images']} | {x['crop']} | 8 | {x['epoch_s']} | {x['s_per_mpx']} |")
    for x in sc["crop"]:
        L.append(f"| {x['images']} | {x['crop']} | {x['batch']} | {x['epoch_s']} | {x['s_per_mpx']} |")
    L += [
        "",
        "Peak resident memory (VmHWM, each in a fresh process). Prediction: `segkit.inference.sliding_window_probs` "
        "(tile 512, overlap 0.25, 4 windows per batch, a small U-Net: the network's activations do not depend on the "
        "image size); 'extra' = peak - resident before the call - the stitched [K, H, W] probabilities and [H, W] "
        "weight sum.",
        "",
        "| run | peak MB | before MB | stitched output MB | extra MB |",
        "|---|---|---|---|---|",
    ]
    for p in mem["predict"]:
        if "error" in p:
            L.append(f"| predict | error: {p['error']} | | | |")
        else:
            L.append(f"| predict {p['size']}x{p['size']} | {p['peak_mb']} | {p['before_mb']} | {p['stitched_mb']} | **{p['extra_mb']}** |")
    t = mem["train"]
    if "error" in t:
        L.append(f"| train | error: {t['error']} | | | |")
    else:
        L.append(f"| train, {t['data']}, {t['steps']} steps (decoded images held in memory: {t['decoded_images_mb']} MB) | "
                 f"{t['peak_mb']} | {t['peak_after_prepare_mb']} (after prepare) | | |")
    L.append("")

    # ------------------------------------------------------------------ 6 precision
    pr = tr["precision"]
    faster_bf16 = all(x["bf16_over_fp32"] < 1.0 for x in pr["rows"])
    L += [
        "## 6. Mixed precision",
        "",
        "Target: on a CPU, `segkit.training.precision` turns a mixed-precision request into the faster of fp32 and bf16 "
        f"(`auto` is always fp32 on a CPU). Measured here: bf16 {'faster' if faster_bf16 else 'slower'} than fp32; "
        f"`bf16-mixed` resolves to `{pr['bf16_mixed_resolves_to']}`, `auto` to `{pr['auto_resolves_to']}`: "
        f"{met((pr['bf16_mixed_resolves_to'] == 'bf16-mixed') == faster_bf16)}.",
        "",
        "| U-Net training step | fp32 s | bf16 autocast s | bf16 / fp32 |",
        "|---|---|---|---|",
    ]
    for x in pr["rows"]:
        L.append(f"| {x['batch']} x {x['size']}x{x['size']} | {x['fp32_step_s']} | {x['bf16_step_s']} | **{x['bf16_over_fp32']}** |")
    if pr.get("plan"):
        pl_ = pr["plan"]
        L += ["", f"With `budget=`, the plan chooses `trainer.precision` for `auto` by its own measurement of the network's training "
              f"step (`segkit.planning.planner.measure_step_seconds`, U-Net width 16, {pl_['batch']} x {pl_['size']}x{pl_['size']}): "
              f"fp32 {pl_['fp32_step_s']} s, bf16 autocast {pl_['bf16_step_s']} s, {pl_['gain']}x; bf16 instructions "
              f"{'reported' if pl_['bf16_instructions'] else 'not reported'} by the CPU; the plan chooses **{pl_['choice']}** "
              f"(bf16-mixed from {pl_['min_gain']}x). Without a budget `auto` stays `{pr['auto_resolves_to']}` on a CPU."]
    L += ["", f"GPU rows (16-mixed / bf16-mixed on CUDA): not available{'' if pr['gpu'] else ': no GPU in this run'}.", ""]

    # ------------------------------------------------------------------ 7 optimisations
    fcost = fc["added_ms_per_step"]
    names = list(fcost)
    L += [
        "## 7. Optimisations, before / after",
        "",
        "Target: each optimisation segkit uses by default is at least as fast as its alternative (after / before >= 1).",
        "",
        "| optimisation | before | after | speed-up (before / after time) | verdict |",
        "|---|---|---|---|---|",
    ]

    def row(name: str, before: str, after: str, speedup: float | None, note: str = "", verdict: str | None = None) -> None:
        verdict = verdict or met(None if speedup is None else speedup >= 1.0)
        L.append(f"| {name} | {before} | {after} | {'' if speedup is None else f'**{speedup:.2f}x**'} | {verdict}{note} |")

    al = tr.get("allocator")
    if al:
        row("C allocator: glibc's default -> segkit's `cpu_allocator=tuned` (plain U-Net training step, "
            f"{al['batch']} x {al['size']}x{al['size']})",
            f"{al['default']['step_s']} s, {al['default']['faults_per_step']} page faults, {al['default']['sys_s_per_step']} system s",
            f"{al['tuned']['step_s']} s, {al['tuned']['faults_per_step']} page faults, {al['tuned']['sys_s_per_step']} system s",
            al["speedup"], f" ({al['processes_per_mode']} fresh processes per setting, alternating, {al['steps_per_process']} "
            "steps each after 2 warm-up steps; median step)")
    if fc.get("metric_update_every_pixel_ms") is not None:
        row(f"training metrics on every pixel -> every {fc['train_metric_stride']}nd pixel in each direction (per step)",
            f"{fc['metric_update_every_pixel_ms']} ms", f"{fc['metric_update_ms']} ms",
            fc["metric_update_every_pixel_ms"] / max(fc["metric_update_ms"], 1e-9),
            " (train/miou is a progress signal on random crops; validation and test count every pixel)")
    cl, nchw = rows["channels_last, batch 8"], rows["contiguous (NCHW), batch 8"]
    row("channels_last vs contiguous (U-Net training step)", f"{nchw['step_s']} s", f"{cl['step_s']} s", nchw["step_s"] / cl["step_s"])
    if "skipped" not in df:
        loader_epoch = df["steps_per_epoch"] * df["batch"] / df["loader_only_samples_per_s"]
        epoch = df["darkfield_epoch_s"]
        row("decoded images held in memory vs decoding every PNG each epoch (training epoch)",
            f"{df['decode_all_s']} s decode + {epoch} s", f"{epoch} s", (df["decode_all_s"] + epoch) / epoch,
            f" (the loader alone: {loader_epoch:.3f} s per epoch from memory)")
        w = df["workers"]
        for n in ("1", "2"):
            row(f"loader workers 0 vs {n} (persistent; darkfield train loader, 1st / 2nd epoch)",
                f"{w[n]['first_epoch_s']} / {w[n]['second_epoch_s']} s with {n}", f"{w['0']['first_epoch_s']} / {w['0']['second_epoch_s']} s with 0",
                w[n]["second_epoch_s"] / max(w["0"]["second_epoch_s"], 1e-9))
    else:
        L.append("| decoded-image cache; loader workers | | | | not measured: no darkfield data |")
    row("batched augmentation vs torchvision v2 per sample (with elastic)", f"{aug['torchvision_ms_per_batch']} ms/batch",
        f"{aug['segkit_ms_per_batch']} ms/batch", aug["speedup"])
    def projected(before_ms: float, after_ms: float) -> float:  # on a U-Net step of the plain loop's length
        return (unet_step_ms + before_ms) / (unet_step_ms + after_ms)

    def default_ok(default_ms: float, other_ms: float) -> str:
        extra = (default_ms - other_ms) / unet_step_ms
        return "**met**" if extra < 0.01 else f"**NOT met** (the default costs {_pct(extra)} of a step more)"

    row("per-step logging: logging every step -> segkit defaults (every 10 steps)", f"{fcost[names[1]]} ms/step added",
        f"{fcost[names[0]]} ms/step added", projected(fcost[names[1]], fcost[names[0]]),
        " (framework cost with a near-free network, projected on a U-Net step; target: the default within 1 % of a step "
        "of the alternative)", default_ok(fcost[names[0]], fcost[names[1]]))
    row("progress bar off + log every 50 steps -> progress bar on + log every 10 (defaults)", f"{fcost[names[2]]} ms/step added",
        f"{fcost[names[0]]} ms/step added", projected(fcost[names[2]], fcost[names[0]]),
        " (projected on a U-Net step; target as above)", default_ok(fcost[names[0]], fcost[names[2]]))
    row("confusion-matrix update: boolean-mask compaction -> extra-bin bincount (per step, 8 x 256x256 at full size)",
        f"{fc['confusion_matrix_before_ms']} ms", f"{fc['confusion_matrix_ms']} ms",
        fc["confusion_matrix_before_ms"] / max(fc["confusion_matrix_ms"], 1e-9))
    comp = rows.get("channels_last, batch 8, torch.compile")
    if comp:
        row("torch.compile (`model.compile=true`, off by default) vs eager", f"{cl['step_s']} s", f"{comp['step_s']} s",
            cl["step_s"] / comp["step_s"], f" (+{ef['compile_s']} s compilation per run)")
    else:
        L.append(f"| torch.compile vs eager | | | | not measured: {ef.get('compile_note')} |")
    b16 = rows["channels_last, batch 16"]
    row("batch 16 vs batch 8 (images/s)", f"{cl['images_per_s']} img/s", f"{b16['images_per_s']} img/s", b16["images_per_s"] / cl["images_per_s"],
        " (not a default: batch size is a training choice)")
    L += ["| cudnn.benchmark | | | | not measurable here: GPU only, no GPU lent to this run |", ""]
    L += [
        "Loader workers: images are decoded once into memory by `prepare()`; a worker only cuts crops (microseconds), and "
        "augmentation runs batched in the main process after transfer, so workers cost their start-up and per-batch "
        "transfer and gain nothing: `data.num_workers: 0` stays the default (on any core count; raise it only for a "
        "dataset whose per-sample loading is expensive).",
        "",
    ] + objects_section(r.get("objects")) + large_section(r.get("large"), r.get("processes")) + train_data_section(r.get("train_data")) + [
        "## Batched augmentation (one CPU thread)",
        "",
        f"A batch of {aug['batch'][0]} uint8 {aug['batch'][1]}x{aug['batch'][2]}x{aug['batch'][3]} images + masks, every "
        "transform on. Target: >= 200 samples/s: "
        f"{aug['segkit_samples_per_s']}, {met(aug['segkit_samples_per_s'] >= 200)}.",
        "",
        "| pipeline | samples/s | ms per batch |",
        "|---|---|---|",
        f"| segkit `BatchAugment` (batched tensor ops) | {aug['segkit_samples_per_s']} | {aug['segkit_ms_per_batch']} |",
        f"| torchvision v2, per sample, with ElasticTransform | {aug['torchvision_samples_per_s']} | {aug['torchvision_ms_per_batch']} |",
        f"| torchvision v2, per sample, without elastic | {aug['torchvision_no_elastic_samples_per_s']} | |",
        "",
    ]
    return "\n".join(L)


OBJECTS_TARGET = 100_000


def objects_section(ob: dict | None) -> list[str]:
    """Section 8: object tables per second (vectorised vs one regionprops call per object)."""
    if not ob:
        return []
    big = ob.get("objects_1e6") or ob.get("objects_6e4")
    small = ob["objects_1e4"]
    ok = big["new_objects_per_s"] >= OBJECTS_TARGET
    L = ["## 8. Object tables at scale (one core)", "",
         f"Target: >= {OBJECTS_TARGET:,} objects/s for the object table of about 10^6 objects, and tables equal to "
         f"the former one-`regionprops`-per-object table. Result: {big['new_objects_per_s']:,} objects/s: {met(ok)}; "
         f"equal on the 10^4 map: {met(small['vs_reference'].get('equal'))}.", "",
         "`segkit.evaluation.objects.object_table` (bincounts over runs of equal labels; solidity from the hull of "
         "each object's boundary pixels) on synthetic instance maps of small shapes on a grid (`benchmarks/objects_bench.py`); "
         "'columns' is the same measurement returned as arrays instead of one dict per row.", "",
         "| map | objects | table s | objects/s | columns objects/s | former table objects/s | speed-up | equal |",
         "|---|---|---|---|---|---|---|---|"]
    for case in (small, big):
        ref = case.get("reference_objects_per_s")
        eq = case.get("vs_reference", {}).get("equal")
        L.append(f"| {case['map'][0]}x{case['map'][1]} | {case['objects']:,} | {case['new_s']} | {case['new_objects_per_s']:,} | "
                 f"{case['new_columns_objects_per_s']:,} | {ref if ref is not None else case.get('reference', '')} | "
                 f"{case.get('speedup', '')} | {'' if eq is None else eq} |")
    if "tiled_equals_whole" in small:
        L += ["", f"Tiled (1024-pixel tiles, objects numbered by connected components across the seams): "
              f"{small['tiled_components_objects_per_s']:,} objects/s, equal to the whole-image table: {small['tiled_equals_whole']}."]
    sd = ob.get("shared_data")
    if sd and "skipped" not in sd:
        L += ["", "Real masks from ../shared/data, new vs former table:", "", "| mask | objects | new s | former s | equal |",
              "|---|---|---|---|---|"]
        for name, v in sd.items():
            if isinstance(v, dict):
                L.append(f"| {name} | {v['objects']} | {v['new_s']} | {v['reference_s']} | {v.get('equal')} |")
    elif sd:
        L += ["", f"Real masks: {sd['skipped']}."]
    return L + [""]


def train_data_section(td: dict | None) -> list[str]:
    """Section 10: training data read from large images (data.storage=disk vs memory)."""
    if not td:
        return []
    L = ["## 10. Training data from images larger than memory", "",
         "A folder with one large RGB tiled TIFF (zlib, 512 px tiles) and its mask TIFF, plus two 256 px PNG pairs; "
         "`SegDataModule.prepare()` (reading, the check of every pixel, the train statistics) with `data.storage=disk` "
         f"(tiles of {td.get('tile', 2048)} px read from the file for each crop) and `memory` (every tile decoded once), then {td['batches']} "
         f"batches of {td['batch']} random {td['crop']} px crops through `train_dataloader`. One fresh process per case; "
         "peak RSS above the RSS after imports.", "",
         f"With `disk` the peak grows x{td['disk_peak_ratio']} from {td['cases'][0]['size']:,}^2 to {td['cases'][-1]['size']:,}^2 "
         f"({td['cases'][-1]['size'] ** 2 / td['cases'][0]['size'] ** 2:.0f}x the pixels).", "",
         "| input | storage | tiles | decoded MB | prepare s | crops/s | peak above imports MB |", "|---|---|---|---|---|---|---|"]
    for c in td["cases"]:
        for st in ("disk", "memory"):
            x = c[st]
            L.append(f"| {c['size']:,}^2 | {st} | {x['tiles']} | {x['decoded_mb']} | {x['prepare_s']} | {x['crops_per_s']} | {x['peak_above_imports_mb']} |")
    return L + [""]


def large_section(lg: dict | None, pr: dict | None = None) -> list[str]:
    """Section 9: region-by-region prediction of images larger than memory, and several processes."""
    if not lg:
        return []
    cases = lg["cases"]
    big = cases[-1]
    L = ["## 9. Images larger than memory; several processes", "",
         f"Targets: peak RSS flat within {lg['targets']['rss_ratio_max']}x and Mpx/s within 10 % (ratio >= "
         f"{lg['targets']['speed_ratio_min']}) from {cases[0]['size']:,}^2 to {big['size']:,}^2. Result: RSS x{big['rss_ratio']}: "
         f"{met(lg['rss_flat'])}; Mpx/s x{big['speed_ratio']}: {met(lg['speed_flat'])}.", "",
         "`segkit.inference.large.predict_large` on synthetic RGB tiled TIFFs (zlib, 512 px tiles), one fresh process per "
         "case, a trivial network (one 1x1 convolution: the figures measure the pipeline that grows with the image; a "
         "network's arithmetic per pixel is the same at every size). Windows 512 px, overlap 0.25, Gaussian blend.", "",
         "| input | file MB | path | seconds | Mpx/s | RSS after set-up MB | peak RSS MB | RSS ratio | Mpx/s ratio |",
         "|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        rg = c["regions"]
        L.append(f"| {c['size']:,}^2 | {c['file_mb']} | region by region | {rg['seconds']} | {rg['mpx_per_s']} | "
                 f"{rg['rss_after_setup_mb']} | {rg['peak_rss_mb']} | {c['rss_ratio']} | {c['speed_ratio']} |")
        if "whole" in c:
            wh = c["whole"]
            L.append(f"| {c['size']:,}^2 | | whole image (before) | {wh['seconds']} | {wh['mpx_per_s']} | {wh['rss_after_setup_mb']} | "
                     f"{wh['peak_rss_mb']} | | |")
    if "labels_equal_share" in cases[0]:
        L += ["", f"Labels of the two paths at {cases[0]['size']:,}^2: {100 * cases[0]['labels_equal_share']:.4f} % of the pixels equal."]
    if pr:
        n = pr.get("devices", 2)
        L += ["", f"Several processes (`segkit.predict devices=N`): {pr['images']} images of {pr['size']}^2, {pr['model']}. Target: "
              f"speed-up >= {pr['target_speedup']} from one device to {n} (here a device is one core: `devices=1 threads=1` against "
              f"`devices={n}`), with identical outputs. Result: x{pr['speedup']}: {met(pr['speedup'] >= pr['target_speedup'])}; "
              f"identical: {pr['identical_outputs']}."]
        if pr.get("rounds", 1) > 1:
            L += ["", f"{pr['rounds']} interleaved rounds (one device, {n} devices, all cores; repeated): each case's time is its "
                  f"median over the rounds; the speed-up of each round alone: {', '.join(f'x{v}' for v in pr['speedup_rounds'])}."]
        if "speedup_vs_all_cores" in pr:
            L += ["", f"Against one process that uses every core (`devices=1`, torch's threads), `devices={n}` is "
                  f"x{pr['speedup_vs_all_cores']}: what a CPU-only machine gains from it."]
        L += ["", "| case | devices | threads per process | started by | predict s | images/s | command s (with start-up) |",
              "|---|---|---|---|---|---|---|"]
        for row in pr["rows"]:
            rounds = f" ({', '.join(str(v) for v in row['predict_s_rounds'])})" if len(row.get("predict_s_rounds", [])) > 1 else ""
            L.append(f"| {row.get('case', '')} | {row['devices']} | {row.get('threads', '')} | {row.get('start_method', '')} | "
                     f"{row['predict_s']}{rounds} | {row['images_per_s']} | {row['command_s']} |")
    return L + [""]
