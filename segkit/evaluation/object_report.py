"""The object section of an evaluation: instances of the object classes in prediction and truth,
object tables (``objects_pred.csv``, ``objects_true.csv``), matching at IoU >= 0.5, and size
distributions compared with the two-sample Kolmogorov-Smirnov test (per image and pooled)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segkit.errors import SegkitError
from segkit.evaluation.objects import compare_sizes, instances, match_objects, object_table, write_objects_csv


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


def object_report(
    preds: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    stems: Sequence[str],
    class_names: list[str],
    object_classes: Sequence[str],
    edge_class: str | None,
    out: Path,
    pixel_size: float | None = None,
) -> dict[str, Any]:
    """Objects of ``object_classes`` in every prediction and ground truth; returns the numbers and a
    Markdown section for the report."""
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
    per_class: dict[str, Any] = {}
    lines = [
        "Objects are 8-connected components of each object class"
        + (f", cells split by watershed across '{edge_class}'" if edge else "")
        + "; a predicted object matches a true one of the same class when their IoU is >= 0.5 (one-to-one). "
        "Sizes compare the pooled object areas of prediction and truth with the two-sample Kolmogorov-Smirnov test "
        "(a high p-value means the distributions cannot be told apart). Tables: `objects_pred.csv`, `objects_true.csv`.",
        "",
        "| class | true objects | predicted | matched | precision | recall | F1 | count error | KS statistic | KS p-value (pooled) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
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
        sizes = compare_sizes(pred_rows, true_rows, name, value, histogram=out / f"sizes_{name}.png")
        ks = sizes["pooled"]
        per_class[name] = {
            **t,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "count_error": count_error,
            "ks_statistic": ks["statistic"],
            "ks_pvalue": ks["pvalue"],
            "median_area_pred": ks["median_a"],
            "median_area_true": ks["median_b"],
            "ks_pvalue_per_image": {im: r["pvalue"] for im, r in sizes["per_image"].items()},
        }
        lines.append(
            f"| {name} | {t['count_true']} | {t['count_pred']} | {t['tp']} | {_f(precision)} | {_f(recall)} | {_f(f1)} | "
            f"{_f(count_error)} | {_f(ks['statistic'])} | {_f(ks['pvalue'])} |"
        )
    lines.append("")
    for c in obj_ids:
        lines += [f"![{class_names[c]} sizes](sizes_{class_names[c]}.png)", ""]
    return {"per_class": per_class, "value": value, "markdown": "\n".join(lines)}
