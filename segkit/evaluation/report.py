"""``eval_report.md`` and the files beside it: metrics.json, per_image.csv, confusion_matrix.csv and the figures
(each a PNG, linked from the report, and an SVG of the same stem beside it)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from segkit import rundir
from segkit.evaluation.metrics import ABSENT_CLASS_POLICY

PER_CLASS = ("iou", "dice", "precision", "recall")

AGGREGATION_TEXT = (
    "**Pooled over the dataset**: every pixel of every evaluated image is counted once in one confusion matrix "
    "(rows = truth, columns = prediction; ignore_index pixels left out) and each score is computed from its totals, "
    "so large images weigh more. **Mean over images**: each image's scores come from its own confusion matrix and are "
    "then averaged over the images, each image weighing the same. Per-class accuracy is the recall (the share of a "
    "class's pixels predicted as that class). Absent classes: " + ABSENT_CLASS_POLICY + "; in the mean over images an "
    "image where a class is absent from both truth and prediction does not count for that class."
)


SCORE_NAMES = {"miou": "mIoU (IoU averaged over classes)", "mdice": "mDice (Dice averaged over classes)",
               "pixel_acc": "pixel accuracy (share of labelled pixels predicted right)"}

SCORES_TEXT = ("All scores are fractions from 0 to 1 (1 = every pixel agrees with the truth). IoU of a class = pixels "
               "in both truth and prediction / pixels in either; Dice = 2 x both / (truth + prediction); precision = "
               "share of the pixels predicted as the class that are the class; recall = share of the class's pixels "
               "predicted as it.")


# ---------------------------------------------------------------------------------------------- report
def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _pct(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.1f} %"


def _figure(alt: str, rel: Path | str) -> str:
    """A Markdown image link to a PNG, naming the SVG beside it."""
    rel = Path(rel)
    return f"![{alt}]({rel.as_posix()}) (vector copy: `{rel.with_suffix('.svg').as_posix()}`)"


def write_outputs(out: Path, result: dict, class_names: list[str], meta: dict, images, masks, stems, worst_k: int,
                  objects: dict | None = None, em: dict | None = None) -> Path:
    """metrics.json, per_image.csv, confusion_matrix.csv, PNGs and eval_report.md; returns the report path."""
    from segkit.evaluation.figures import (
        class_bar_png,
        confusion_png,
        curves_png,
        error_colour_names,
        error_shares,
        worst_overlay_png,
    )

    out.mkdir(parents=True, exist_ok=True)
    pooled, mean = result["pooled"], result["mean_over_images"]
    metrics = {"pooled": pooled, "mean_over_images": mean}
    summary = {
        "metrics": {agg: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()} for agg, m in metrics.items()},
        "confusion_matrix": result["confusion"].tolist(),
        "class_names": class_names,
        "aggregation": {"pooled": "one confusion matrix over every pixel of every image", "mean_over_images": "scores per image, then their mean"},
        "absent_class_policy": ABSENT_CLASS_POLICY,
        **meta,
    }
    if objects:
        summary["objects"] = objects
    if em:
        summary["metrics"]["em_mean_over_slices"] = em["mean_over_slices"]
        summary["em"] = {k: v for k, v in em.items() if k not in ("markdown", "mean_over_slices", "mean_over_slices_rows")}
    rundir.write_metrics(out / rundir.METRICS, "eval", summary)
    rows = result["per_image"]
    with (out / "per_image.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cm = result["confusion"].numpy()
    with (out / "confusion_matrix.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, cm.tolist(), strict=True):
            writer.writerow([name, *row])

    confusion_png(cm, class_names, out / "confusion_matrix.png")
    class_bar_png(pooled, mean, class_names, out / "per_class.png")
    curves = curves_png(meta.get("run_dir"), out / "training_curves.png")
    order = sorted(range(len(rows)), key=lambda i: (math.isnan(rows[i]["miou"]), rows[i]["miou"]))[:worst_k]
    worst = []
    for rank, i in enumerate(order):
        path = out / "worst" / f"{rank + 1:02d}_{stems[i]}.png"
        worst_overlay_png(np.asarray(images[i]), np.asarray(masks[i]), result["predictions"][i], class_names, path, f"{stems[i]}: mIoU {_fmt(rows[i]['miou'])} (0-1)")
        fp, fn = error_shares(np.asarray(masks[i]), result["predictions"][i])
        worst.append((stems[i], rows[i]["miou"], fp, fn, path.relative_to(out)))
    fp_colour, fn_colour = error_colour_names(len(class_names))

    lines = [
        f"# Evaluation of `{meta['checkpoint']}`",
        "",
        f"Data: `{meta['data']['name']}` at `{meta['data']['root']}`, split **{meta['split']}** ({len(rows)} images, "
        f"{int(cm.sum())} labelled pixels, i.e. pixels whose truth is not ignored), from {meta['data_source']}. "
        f"Device {meta['device']}, {meta['wall_time_s']:.1f} s.",
        "",
        f"Prediction: {len(meta['checkpoints'])} checkpoint(s){' averaged in probability space' if len(meta['checkpoints']) > 1 else ''}; "
        f"test-time augmentation {meta['tta'] or 'none'}; post-processing: {meta['postprocess'] or 'none (argmax)'} "
        f"(from {meta['postprocess_source']}).",
        *_emptied_lines(meta, class_names),
        "",
        "## Scores",
        "",
        "| metric | pooled over the dataset | mean over images |",
        "|---|---|---|",
        *[f"| {SCORE_NAMES[k]} | {_fmt(pooled[k])} | {_fmt(mean[k])} |" for k in ("miou", "mdice", "pixel_acc")],
        "",
        SCORES_TEXT,
        "",
        "| class | " + " | ".join(f"{k} (pooled)" for k in PER_CLASS) + " | IoU (mean over images) |",
        "|---|" + "---|" * (len(PER_CLASS) + 1),
        *[f"| {c} | " + " | ".join(_fmt(pooled[f"{k}/{c}"]) for k in PER_CLASS) + f" | {_fmt(mean[f'iou/{c}'])} |" for c in class_names],
        "",
        "Per-class accuracy = recall. " + AGGREGATION_TEXT,
        "",
        "## Confusion matrix (pooled pixel counts; colour = share of the true class)",
        "",
        "Each cell counts the pixels (px) of the row's true class predicted as the column's class; the diagonal is right, "
        "everything else wrong.",
        "",
        _figure("confusion matrix", "confusion_matrix.png"),
        "",
        "| true \\ predicted | " + " | ".join(class_names) + " |",
        "|---|" + "---|" * len(class_names),
        *[f"| {n} | " + " | ".join(str(v) for v in row) + " |" for n, row in zip(class_names, cm.tolist(), strict=True)],
        "",
        "## Per-class scores",
        "",
        _figure("per-class scores", "per_class.png"),
        "",
        "## Training curves",
        "",
        _figure("training curves", "training_curves.png") if curves else "No training logs found next to the checkpoint.",
        "",
        f"## The {len(worst)} images with the lowest mIoU (input | truth | prediction | errors)",
        "",
        f"Error panel: **{fp_colour}** = false positive (truth background, predicted a class), **{fn_colour}** = false "
        "negative (a true class predicted as background or as another class), grey = not labelled; neither colour is "
        "a class colour. Shares are in % of the image's labelled pixels.",
        "",
    ]
    for stem, miou, fp, fn, rel in worst:
        lines += [f"**{stem}**: mIoU {_fmt(miou)}; false positives {_pct(fp)}, false negatives {_pct(fn)} of its labelled pixels",
                  "", _figure(stem, rel), ""]
    if objects:
        lines += ["## Objects", "", objects.get("markdown", ""), ""]
    if em:
        lines += ["## EM challenge scores (ISBI 2012: V_rand, V_info, pixel error)", "", em["markdown"], ""]
    lines += ["Every image's scores are in `per_image.csv`; all numbers are in `metrics.json`.", ""]
    report = out / "eval_report.md"
    report.write_text("\n".join(lines))
    return report


def _emptied_lines(meta: dict, class_names: list[str]) -> list[str]:
    """A warning under the prediction line for each image where the post-processing thresholds removed a class
    the argmax predicted."""
    emptied = meta.get("emptied_by_thresholds") or {}
    if not emptied:
        return []
    from segkit.inference.postprocess import emptied_item

    rows = [f"- `{stem}`: " + "; ".join(emptied_item(n, class_names) for n in notes) for stem, notes in emptied.items()]
    return ["", f"**Warning: the post-processing thresholds removed every pixel of a class the argmax predicted, in "
                f"{len(emptied)} of the images** (lower the threshold, or tune it on validation):", "", *rows]
