"""Evaluate a checkpoint: ``python -m segkit.eval ckpt_path=<ckpt> [data=<name> data.root=<folder>] [split=...]``.

Writes into the run directory (``outputs/eval/runs/<time>/``): ``metrics.json``, ``per_image.csv``,
``confusion_matrix.csv``, ``eval_report.md`` with its PNGs (confusion matrix, per-class bars, training
curves, the worst-k images as input | truth | prediction | error overlays), when the data names
object classes, object matching and size distributions, and on ISBI 2012 membrane data the EM challenge
scores (V_rand, V_info, pixel error per slice and their mean: segkit.analysis.em, ``em_scores`` in
conf/eval.yaml). ``evaluate(...)`` is the plain function.

Aggregations, both reported and named:
- pooled over the dataset: one confusion matrix over every pixel of every image, scores from its totals;
- mean over images: each image's scores from its own confusion matrix, then the mean over images of
  each score (an image where a class is absent from both truth and prediction does not count for it).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from segkit import CONF_DIR
from segkit.errors import SegkitError, exit_on_user_error
from segkit.metrics import ABSENT_CLASS_POLICY, confusion_matrix, scores
from segkit.module import SegModule

PER_CLASS = ("iou", "dice", "precision", "recall")
AGGREGATION_TEXT = (
    "**Pooled over the dataset**: every pixel of every evaluated image is counted once in one confusion matrix "
    "(rows = truth, columns = prediction; ignore_index pixels left out) and each score is computed from its totals, "
    "so large images weigh more. **Mean over images**: each image's scores come from its own confusion matrix and are "
    "then averaged over the images, each image weighing the same. Per-class accuracy is the recall (the share of a "
    "class's pixels predicted as that class). Absent classes: " + ABSENT_CLASS_POLICY + "; in the mean over images an "
    "image where a class is absent from both truth and prediction does not count for that class."
)


def load_checkpoint(path: str | Path, device: torch.device) -> SegModule:
    """A segkit checkpoint as an eval-mode :class:`SegModule` (weights only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise SegkitError(f"ckpt_path '{path}' does not exist; expected a .ckpt written by segkit.train (e.g. <run>/checkpoints/best.ckpt)")
    try:
        module = SegModule.load_from_checkpoint(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - anything that is not a segkit checkpoint
        raise SegkitError(f"'{path}' is not a segkit checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]}); expected a .ckpt written by segkit.train") from None
    return module.eval().to(device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def predict_probs(module: SegModule, image: np.ndarray, tile: int = 1024, overlap: float = 0.25, batch_size: int = 4) -> torch.Tensor:
    """Softmax probabilities ``[K, H, W]`` (on the CPU) for one ``[H, W, C]`` uint8 image, by the same
    path as ``segkit.predict``: one forward pass when it fits in a tile, else a Gaussian-blended sliding window."""
    return label_probs([module], {"tile": tile, "overlap": overlap, "batch_size": batch_size}, {})(image)


def label_probs(modules: Sequence[SegModule], inference: dict, tta: dict) -> Callable[[np.ndarray], torch.Tensor]:
    """``[H, W, C]`` uint8 image -> probabilities ``[K, H, W]`` (CPU): ``segkit.predict.make_predictor``
    (sliding window, ensemble, TTA) with eval's defaults (tiles of 1024, stitched on the CPU)."""
    from segkit.predict import make_predictor

    settings = {"tile": 1024, "overlap": 0.25, "batch_size": 4, "stitch_device": "cpu", **inference}

    def probs(image: np.ndarray) -> torch.Tensor:
        predictor = make_predictor(modules, settings, tta, image.shape[0] * image.shape[1])
        with torch.inference_mode():
            return predictor(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))

    return probs


def image_scores(cm: torch.Tensor, class_names: Sequence[str]) -> dict[str, float]:
    s = scores(cm)
    out = {k: float(s[k]) for k in ("miou", "mdice", "pixel_acc")}
    for key in PER_CLASS:
        for name, v in zip(class_names, s[key].tolist(), strict=True):
            out[f"{key}/{name}"] = float(v)
    return out


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if arr.size and not np.all(np.isnan(arr)) else float("nan")


def evaluate(
    predict_labels: Callable[[np.ndarray], np.ndarray],
    class_names: Sequence[str],
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    stems: Sequence[str],
    ignore_index: int,
) -> dict[str, Any]:
    """Label every image with ``predict_labels`` (``[H, W, C]`` uint8 -> ``[H, W]`` class ids); return the
    pooled and per-image confusion matrices, their scores and the predictions."""
    k = len(class_names)
    pooled = torch.zeros(k, k, dtype=torch.long)
    rows, preds = [], []
    for image, mask, stem in zip(images, masks, stems, strict=True):
        pred = np.asarray(predict_labels(image)).astype(np.uint8)
        cm = confusion_matrix(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(mask.astype(np.int64)), k, ignore_index)
        pooled += cm
        rows.append({"image": stem, "pixels": int(cm.sum()), **image_scores(cm, class_names)})
        preds.append(pred)
    pooled_scores = image_scores(pooled, class_names)
    mean_scores = {key: _nanmean([r[key] for r in rows]) for key in pooled_scores}
    return {"confusion": pooled, "pooled": pooled_scores, "mean_over_images": mean_scores, "per_image": rows, "predictions": preds}


def label_function(modules: Sequence[SegModule], inference: dict, tta: dict, post: dict | None,
                   on_probs: Callable[[np.ndarray], None] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Image -> labels: one checkpoint, or an ensemble averaged in probability space, with optional
    test-time flips/rotations, then ``post`` (segkit.inference.postprocess) or the argmax. ``on_probs``
    (optional) sees each image's ``[K, H, W]`` probabilities before they become labels."""
    from segkit.inference import postprocess

    probs_of = label_probs(modules, inference, tta)

    def labels(image: np.ndarray) -> np.ndarray:
        p = probs_of(image).numpy()
        if on_probs is not None:
            on_probs(p)
        return postprocess(p, post) if post else p.argmax(0)

    return labels


# ---------------------------------------------------------------------------------------------- data
def _run_dir(ckpt: Path) -> Path:
    return ckpt.resolve().parent.parent


def eval_data(cfg: DictConfig, ckpt: Path):
    """The datamodule to evaluate on: ``cfg.data`` when given, else the checkpoint's run config with its
    splits.json (the same split the model was validated on)."""
    if cfg.get("data") is not None:
        return instantiate(cfg.data, _convert_="all"), "data config given on the command line"
    run = _run_dir(ckpt)
    config = run / "run_config.yaml"
    if not config.is_file():
        config = run / ".hydra" / "config.yaml"
    if not config.is_file():
        raise SegkitError(f"no data=... given and '{run / 'run_config.yaml'}' does not exist; expected the checkpoint inside a segkit run directory, or pass data=<name> data.root=<folder>")
    run_cfg = OmegaConf.load(config)
    data_cfg = run_cfg.data
    splits = run / "splits.json"
    if splits.is_file():
        data_cfg.split_file = str(splits)
    return instantiate(data_cfg, _convert_="all"), f"the training run's data config ({config})"


def select_split(dm, split: str) -> tuple[list[np.ndarray], list[np.ndarray], list[str], str]:
    if split == "auto":
        split = "test" if dm.split.get("test") else "val"
    if split == "all":
        return (*dm.arrays("all"), "all")
    if split not in ("train", "val", "test"):
        raise SegkitError(f"split is '{split}'; expected auto, test, val, train or all")
    if not dm.split.get(split):
        raise SegkitError(f"the {split} split of data '{dm.name}' at '{dm.root}' is empty; expected split=val, split=all, or data.test_fraction > 0")
    images, masks, stems = dm.arrays(split)
    return images, masks, stems, split


# ---------------------------------------------------------------------------------------------- report
def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def write_outputs(out: Path, result: dict, class_names: list[str], meta: dict, images, masks, stems, worst_k: int,
                  objects: dict | None = None, em: dict | None = None) -> Path:
    """metrics.json, per_image.csv, confusion_matrix.csv, PNGs and eval_report.md; returns the report path."""
    from segkit.report import class_bar_png, confusion_png, curves_png, worst_overlay_png

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
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
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
        worst_overlay_png(images[i], masks[i], result["predictions"][i], class_names, path, f"{stems[i]}: mIoU {_fmt(rows[i]['miou'])}")
        worst.append((stems[i], rows[i]["miou"], path.relative_to(out)))

    lines = [
        f"# Evaluation of `{meta['checkpoint']}`",
        "",
        f"Data: `{meta['data']['name']}` at `{meta['data']['root']}`, split **{meta['split']}** ({len(rows)} images, "
        f"{int(cm.sum())} labelled pixels), from {meta['data_source']}. Device {meta['device']}, {meta['wall_time_s']:.1f} s.",
        "",
        f"Prediction: {len(meta['checkpoints'])} checkpoint(s){' averaged in probability space' if len(meta['checkpoints']) > 1 else ''}; "
        f"test-time augmentation {meta['tta'] or 'none'}; post-processing: {meta['postprocess'] or 'none (argmax)'} "
        f"(from {meta['postprocess_source']}).",
        "",
        "## Scores",
        "",
        "| metric | pooled over the dataset | mean over images |",
        "|---|---|---|",
        *[f"| {k} | {_fmt(pooled[k])} | {_fmt(mean[k])} |" for k in ("miou", "mdice", "pixel_acc")],
        "",
        "| class | " + " | ".join(f"{k} (pooled)" for k in PER_CLASS) + " | IoU (mean over images) |",
        "|---|" + "---|" * (len(PER_CLASS) + 1),
        *[f"| {c} | " + " | ".join(_fmt(pooled[f"{k}/{c}"]) for k in PER_CLASS) + f" | {_fmt(mean[f'iou/{c}'])} |" for c in class_names],
        "",
        "Per-class accuracy = recall. " + AGGREGATION_TEXT,
        "",
        "## Confusion matrix (pooled pixel counts; colour = share of the true class)",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "| true \\ predicted | " + " | ".join(class_names) + " |",
        "|---|" + "---|" * len(class_names),
        *[f"| {n} | " + " | ".join(str(v) for v in row) + " |" for n, row in zip(class_names, cm.tolist(), strict=True)],
        "",
        "## Per-class scores",
        "",
        "![per-class scores](per_class.png)",
        "",
        "## Training curves",
        "",
        "![training curves](training_curves.png)" if curves else "No training logs found next to the checkpoint.",
        "",
        f"## The {len(worst)} images with the lowest mIoU (input | truth | prediction | errors in red)",
        "",
    ]
    for stem, miou, rel in worst:
        lines += [f"**{stem}**: mIoU {_fmt(miou)}", "", f"![{stem}]({rel})", ""]
    if objects:
        lines += ["## Objects", "", objects.get("markdown", ""), ""]
    if em:
        lines += ["## EM challenge scores (ISBI 2012: V_rand, V_info, pixel error)", "", em["markdown"], ""]
    lines += ["Every image's scores are in `per_image.csv`; all numbers are in `metrics.json`.", ""]
    report = out / "eval_report.md"
    report.write_text("\n".join(lines))
    return report


def eval_postprocess(value: Any, ckpt: Path) -> tuple[dict | None, str]:
    """``postprocess``: null = argmax; ``tuned`` = postprocess.json next to the first checkpoint; or a mapping."""
    if value is None:
        return None, "none (argmax)"
    if isinstance(value, str):
        if value != "tuned":
            raise SegkitError(f"postprocess is '{value}'; expected null, tuned, or a mapping of post-processing keys")
        from segkit.predict import POSTPROCESS_FILE, load_postprocess

        post, source = load_postprocess(None, ckpt)
        if post is None:
            raise SegkitError(f"postprocess=tuned but '{ckpt.parent / POSTPROCESS_FILE}' does not exist; run segkit.tune_postprocess first")
        return post, source
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else dict(value), "postprocess=... on the command line"


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    raw = cfg.ckpt_path
    ckpts = [Path(str(p)) for p in (raw if isinstance(raw, ListConfig | list | tuple) else [raw])]
    ckpt = ckpts[0]
    device = resolve_device(str(cfg.device))
    modules = [load_checkpoint(p, device) for p in ckpts]
    module = modules[0]
    for p, m in zip(ckpts[1:], modules[1:], strict=True):
        if m.class_names != module.class_names:
            raise SegkitError(f"checkpoint '{p}' predicts {m.class_names} but '{ckpt}' predicts {module.class_names}; expected an ensemble over the same classes")
    dm, data_source = eval_data(cfg, ckpt)
    dm.prepare()
    if list(dm.class_names) != list(module.class_names):
        raise SegkitError(
            f"data '{dm.name}' has classes {dm.class_names} but checkpoint '{ckpt}' was trained on {module.class_names}; "
            "expected the same classes in the same order (set data.class_names)"
        )
    if dm.in_channels != module.norm_mean.shape[1]:
        raise SegkitError(f"data.in_channels is {dm.in_channels} but checkpoint '{ckpt}' expects {module.norm_mean.shape[1]} channels")
    images, masks, stems, split = select_split(dm, str(cfg.split))
    inference = OmegaConf.to_container(cfg.inference, resolve=True) if cfg.get("inference") else {}
    tta = OmegaConf.to_container(cfg.tta, resolve=True) if cfg.get("tta") else {}
    post, post_source = eval_postprocess(cfg.get("postprocess"), ckpt)
    from segkit.analysis.em import check_thresholds, em_report, membrane_class

    membrane = membrane_class(dm.format, dm.name, dm.format_options, dm.class_names, cfg.get("em_scores", "auto"))
    em_thresholds = check_thresholds(cfg.get("em_thresholds") or [0.5]) if membrane is not None else []
    membrane_probs: list[np.ndarray] = []
    keep = None if membrane is None else (lambda p: membrane_probs.append(p[membrane].astype(np.float32)))
    result = evaluate(label_function(modules, inference, tta, post, keep), list(module.class_names), images, masks, stems, dm.ignore_index)
    out = Path(cfg.paths.output_dir)
    meta = {
        "checkpoint": str(ckpt),
        "checkpoints": [str(p) for p in ckpts],
        "tta": tta,
        "postprocess": post,
        "postprocess_source": post_source,
        "run_dir": str(_run_dir(ckpt)),
        "split": split,
        "num_images": len(stems),
        "data": {"name": dm.name, "root": str(dm.root)},
        "data_source": data_source,
        "device": str(device),
        "wall_time_s": time.perf_counter() - started,
    }
    objects = None
    if dm.object_classes:
        from segkit.analysis.report import object_report

        objects = object_report(result["predictions"], masks, stems, list(dm.class_names), dm.object_classes, dm.edge_class, out)
    em = None
    if membrane is not None:
        em = em_report(membrane_probs, masks, stems, membrane, em_thresholds, split, out,
                       dm.ignore_index, int(cfg.get("em_connectivity", 4)), str(cfg.get("em_background", "segment")))
    report = write_outputs(out, result, list(dm.class_names), meta, images, masks, stems, int(cfg.worst_k), objects, em)
    p = result["pooled"]
    per_class = ", ".join(f"{c} {_fmt(p[f'iou/{c}'])}" for c in dm.class_names)
    print(f"{split} ({len(stems)} images), pooled: mIoU {_fmt(p['miou'])}  mDice {_fmt(p['mdice'])}  IoU per class: {per_class}")
    m = result["mean_over_images"]
    print(f"mean over images: mIoU {_fmt(m['miou'])}  mDice {_fmt(m['mdice'])}")
    for row in (em or {}).get("mean_over_slices_rows", []):
        print(f"EM scores (mean over slices) at threshold {row['threshold']:g}: pixel error {_fmt(row['pixel_error'])}  "
              f"V_rand {_fmt(row['v_rand'])}  V_info {_fmt(row['v_info'])}")
    print(f"Report: {report}", flush=True)
    return {**result, "em": em, "report": report, "output_dir": out}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error():
        result = run_eval(cfg)
    return result["pooled"]["miou"]


if __name__ == "__main__":
    main()
