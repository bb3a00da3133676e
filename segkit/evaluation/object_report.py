"""The object section of an evaluation: instances of the object classes in prediction and truth,
object tables (``objects_pred.csv``, ``objects_true.csv``), matching at IoU >= 0.5, and size
distributions compared with the two-sample Kolmogorov-Smirnov test (per image and pooled).

Sizes are in µm² / µm when the pixel size is known (``pixel_size``, micrometres per pixel), else in
pixels, and the report says which. Objects touching the image border are cut by it: they are flagged
(``touches_border``) and, by default (``exclude_border``), left out of the size statistics (KS test,
medians, histograms) but kept in the counts and the matching."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segkit.errors import SegkitError
from segkit.evaluation.objects import (
    compare_sizes,
    instances,
    match_objects,
    object_table,
    size_histogram_png,
    write_objects_csv,
)


def class_ids(names: Sequence[str], class_names: Sequence[str], key: str) -> list[int]:
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise SegkitError(
            f"{key} names {unknown}, which are not in data.class_names {list(class_names)}; expected class names"
        )
    return [list(class_names).index(n) for n in names]


def _f(v: float) -> str:
    return (
        "n/a"
        if v is None or (isinstance(v, float) and math.isnan(v))
        else (f"{v:.4g}" if isinstance(v, float) else str(v))
    )


def _pct(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.0f} %"


def _percent_number(v: float) -> str:
    x = 100 * abs(v)
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}".rstrip("0").rstrip(".")


def count_error_text(count_error: float) -> str:
    """``-0.10`` -> ``count error -0.10 = 10 % fewer objects predicted than true``."""
    if count_error is None or math.isnan(count_error):
        return "count error n/a (no true objects)"
    if count_error == 0:
        return "count error 0.00 = as many objects predicted as true"
    more = "more" if count_error > 0 else "fewer"
    return f"count error {count_error:+.2f} = {_percent_number(count_error)} % {more} objects predicted than true"


def _pvalue(p: float) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return f"{p:.2g}" + (" (differ)" if p < 0.05 else " (no difference shown)")


def object_report(
    preds: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    stems: Sequence[str],
    class_names: list[str],
    object_classes: Sequence[str],
    edge_class: str | None,
    out: Path,
    pixel_size: float | None = None,
    exclude_border: bool = True,
) -> dict[str, Any]:
    """Objects of ``object_classes`` in every prediction and ground truth; returns the numbers and a
    Markdown section for the report. ``pixel_size``: micrometres per pixel (sizes in µm² and µm), or None
    (sizes in pixels). ``exclude_border``: leave objects touching the image border out of the size
    statistics (they are counted and matched all the same)."""
    obj_ids = class_ids(object_classes, class_names, "data.object_classes")
    edge = class_ids([edge_class], class_names, "data.edge_class")[0] if edge_class else None
    pred_rows: list[dict] = []
    true_rows: list[dict] = []
    totals = {c: {"tp": 0, "count_pred": 0, "count_true": 0} for c in obj_ids}
    for pred, mask, stem in zip(preds, masks, stems, strict=True):
        truth = np.where(mask == 255, 0, mask)  # ignored pixels are no object
        p_inst, p_cls = instances(pred, obj_ids, edge)
        t_inst, t_cls = instances(truth, obj_ids, edge)
        pred_rows += object_table(p_inst, p_cls, class_names, pixel_size, stem)
        true_rows += object_table(t_inst, t_cls, class_names, pixel_size, stem)
        m = match_objects(p_inst, p_cls, t_inst, t_cls)
        for c in obj_ids:
            counts = m["per_class"].get(c, {})
            for key in totals[c]:
                totals[c][key] += int(counts.get(key, 0))
    out.mkdir(parents=True, exist_ok=True)
    write_objects_csv(pred_rows, out / "objects_pred.csv")
    write_objects_csv(true_rows, out / "objects_true.csv")
    value = "area_um2" if pixel_size else "area"
    unit = "µm²" if pixel_size else "px"
    size_pred = [r for r in pred_rows if not (exclude_border and r["touches_border"])]
    size_true = [r for r in true_rows if not (exclude_border and r["touches_border"])]
    per_class: dict[str, Any] = {}
    if pixel_size:
        units = (f"Sizes are in µm² (areas) and µm (lengths) at {pixel_size:g} µm per pixel; the object tables have "
                 "both (`area` in pixels next to `area_um2`, `perimeter` next to `perimeter_um`, ...).")
    else:
        units = ("Sizes are in pixels (px) because no pixel size was given; give it with `pixel_size=<micrometres per "
                 "pixel>` on the segkit.eval command line (e.g. `pixel_size=0.65`) to get areas in µm² and lengths in µm.")
    lines = [
        "Objects are 8-connected components of each object class"
        + (f", cells split by watershed across '{edge_class}'" if edge else "")
        + "; a predicted object matches a true one of the same class when their IoU (overlap / union, in pixels) "
        "is >= 0.5, one to one. Tables: `objects_pred.csv`, `objects_true.csv` (one row per object). " + units,
        "",
        "Counts and matching use all objects, including those touching the image border.",
        "",
        "| class | true objects | predicted objects | matched | precision (% of predicted matched) | "
        "recall (% of true found) | F1 (%) | count error (predicted - true) / true |",
        "|---|---|---|---|---|---|---|---|",
    ]
    size_lines = [
        "",
        f"**Sizes** (object area in {unit}): the two-sample Kolmogorov-Smirnov (KS) test compares the pooled areas of "
        "prediction and truth; the KS distance D is the largest gap between the two cumulative size distributions "
        "(0 = identical, 1 = no overlap), and the KS p-value is the chance of a D this large if both came from one "
        "distribution (below 0.05: the sizes differ).",
        "",
        f"| class | true objects measured | predicted objects measured | median area, true ({unit}) | "
        f"median area, predicted ({unit}) | KS distance D (0-1) | KS p-value |",
        "|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    border_lines: list[str] = []
    figures: list[str] = []
    for c in obj_ids:
        name = class_names[c]
        t = totals[c]
        precision = t["tp"] / t["count_pred"] if t["count_pred"] else math.nan
        recall = t["tp"] / t["count_true"] if t["count_true"] else math.nan
        f1 = (
            2 * t["tp"] / (t["count_pred"] + t["count_true"])
            if (t["count_pred"] + t["count_true"])
            else math.nan
        )
        count_error = (t["count_pred"] - t["count_true"]) / t["count_true"] if t["count_true"] else math.nan
        border_pred = sum(1 for r in pred_rows if r["class"] == name and r["touches_border"])
        border_true = sum(1 for r in true_rows if r["class"] == name and r["touches_border"])
        sizes = compare_sizes(size_pred, size_true, name, value)
        ks = sizes["pooled"]
        groups = {
            "prediction": [float(r[value]) for r in size_pred if r["class"] == name],
            "ground truth": [float(r[value]) for r in size_true if r["class"] == name],
        }
        title = f"{name}: object area ({unit}), {len(stems)} image{'s' if len(stems) != 1 else ''}" + (
            ", border objects left out" if exclude_border else ""
        )
        for suffix in (".png", ".svg"):
            size_histogram_png(groups, out / f"sizes_{name}{suffix}", title, xlabel=f"area ({unit})")
        figures += [f"sizes_{name}.png", f"sizes_{name}.svg"]
        per_class[name] = {
            **t,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "count_error": count_error,
            "border_pred": border_pred,
            "border_true": border_true,
            "size_count_pred": ks["n_a"],
            "size_count_true": ks["n_b"],
            "ks_statistic": ks["statistic"],
            "ks_pvalue": ks["pvalue"],
            "median_area_pred": ks["median_a"],
            "median_area_true": ks["median_b"],
            "ks_pvalue_per_image": {im: r["pvalue"] for im, r in sizes["per_image"].items()},
        }
        lines.append(
            f"| {name} | {t['count_true']} | {t['count_pred']} | {t['tp']} | {_pct(precision)} | {_pct(recall)} | "
            f"{_pct(f1)} | {'n/a' if math.isnan(count_error) else f'{count_error:+.2f}'} |"
        )
        notes.append(f"- {name}: {count_error_text(count_error)} ({t['count_pred']} predicted, {t['count_true']} true).")
        size_lines.append(
            f"| {name} | {ks['n_b']} | {ks['n_a']} | {_f(ks['median_b'])} | {_f(ks['median_a'])} | "
            f"{_f(ks['statistic'])} | {_pvalue(ks['pvalue'])} |"
        )
        touching = (f"{border_pred} of {t['count_pred']} predicted and {border_true} of {t['count_true']} true {name} "
                    "objects touch the image border")
        border_lines.append(
            f"- {touching} and are left out of the size statistics; `objects.exclude_border=false` keeps them."
            if exclude_border
            else f"- {touching}; they are kept in the size statistics (`objects.exclude_border=false`)."
        )
    lines += ["", *notes, *size_lines, "",
              "Objects touching the image border are cut by it, so their areas are too small:", "", *border_lines, ""]
    for c in obj_ids:
        n = class_names[c]
        lines += [f"![{n} sizes](sizes_{n}.png) (vector copy: `sizes_{n}.svg`)", ""]
    return {
        "per_class": per_class,
        "value": value,
        "unit": unit,
        "pixel_size_um": pixel_size,
        "exclude_border": exclude_border,
        "figures": figures,
        "markdown": "\n".join(lines),
    }
