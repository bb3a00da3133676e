"""Evaluating checkpoints on labelled data (``segkit.eval``). Aggregations, both reported and named:
- pooled over the dataset: one confusion matrix over every pixel of every image, scores from its totals;
- mean over images: each image's scores from its own confusion matrix, then the mean over images of
  each score (an image where a class is absent from both truth and prediction does not count for it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from segkit import rundir
from segkit.errors import SegkitError
from segkit.evaluation.metrics import confusion_matrix, scores
from segkit.evaluation.report import PER_CLASS, _fmt, write_outputs
from segkit.inference.load import load_network, resolve_device
from segkit.inference.predictor import label_function
from segkit.logs import say
from segkit.registry import check_config_targets


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
        mask = np.asarray(mask)  # a tile of a large image (segkit.data.regions) is read here
        cm = confusion_matrix(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(mask.astype(np.int64)), k, ignore_index)
        pooled += cm
        rows.append({"image": stem, "pixels": int(cm.sum()), **image_scores(cm, class_names)})
        preds.append(pred)
    pooled_scores = image_scores(pooled, class_names)
    mean_scores = {key: _nanmean([r[key] for r in rows]) for key in pooled_scores}
    return {"confusion": pooled, "pooled": pooled_scores, "mean_over_images": mean_scores, "per_image": rows, "predictions": preds}


# ---------------------------------------------------------------------------------------------- data
def eval_data(cfg: DictConfig, ckpt: Path):
    """The datamodule to evaluate on: ``cfg.data`` when given, else the checkpoint's run config with its
    splits.json (the same split the model was validated on). The run config is data: its ``data._target_``
    must be segkit's own datamodule (``segkit.registry``), or nothing is built."""
    if cfg.get("data") is not None:
        return instantiate(cfg.data, _convert_="all"), "data config given on the command line"
    run = rundir.run_of_checkpoint(ckpt)
    config = run.config_file() if run is not None else None
    if config is None:
        where = run.run_config if run is not None else ckpt.resolve().parent / rundir.RUN_CONFIG
        raise SegkitError(f"no data=... given and '{where}' does not exist; expected the checkpoint inside a segkit run directory "
                          f"(<run>/{rundir.CHECKPOINTS}/<name>.ckpt), or pass data=<name> data.root=<folder>")
    checked = check_config_targets(OmegaConf.to_container(OmegaConf.load(config), resolve=False), config)
    if not isinstance(checked.get("data"), dict) or "_target_" not in checked["data"]:
        raise SegkitError(f"'{config}' has no data section with a _target_; expected the run config segkit.train writes")
    data_cfg = OmegaConf.create(checked).data
    if run.splits.is_file():
        data_cfg.split_file = str(run.splits)
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


def eval_postprocess(value: Any, ckpt: Path | list[Path]) -> tuple[dict | None, str]:
    """``postprocess``: null = argmax; ``tuned`` = postprocess.json next to the checkpoint (for an ensemble, the
    record ``segkit.tune_postprocess`` wrote for these members); ``auto`` = that file when it exists
    (segkit.train tunes on validation after training), else argmax; or a mapping."""
    if value is None:
        return None, "none (argmax)"
    if isinstance(value, str):
        if value not in ("tuned", "auto"):
            raise SegkitError(f"postprocess is '{value}'; expected null, auto, tuned, or a mapping of post-processing keys")
        from segkit.inference.files import load_postprocess
        from segkit.rundir import postprocess_file

        post, source = load_postprocess(None, ckpt)
        if post is None and value == "auto":
            return None, f"none (argmax; no {postprocess_file(ckpt).name} next to the checkpoint)"
        if post is None:
            raise SegkitError(f"postprocess=tuned but '{postprocess_file(ckpt)}' does not exist; run segkit.tune_postprocess "
                              "with the same ckpt_path first")
        return post, source
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else dict(value), "postprocess=... on the command line"


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    raw = cfg.ckpt_path
    ckpts = [Path(str(p)) for p in (raw if isinstance(raw, ListConfig | list | tuple) else [raw])]
    ckpt = ckpts[0]
    device = resolve_device(str(cfg.device))
    modules = [load_network(p, device) for p in ckpts]
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
    # tiles of large images (segkit.data.regions) stay on disk until predicted; their masks are read here, as the
    # predictions (1 byte per pixel each) are kept for the report anyway
    masks = [np.asarray(m) for m in masks]
    inference = OmegaConf.to_container(cfg.inference, resolve=True) if cfg.get("inference") else {}
    tta = OmegaConf.to_container(cfg.tta, resolve=True) if cfg.get("tta") else {}
    post, post_source = eval_postprocess(cfg.get("postprocess"), ckpts)
    from segkit.evaluation.em import check_thresholds, em_report, membrane_class

    membrane = membrane_class(dm.format, dm.name, dm.format_options, dm.class_names, cfg.get("em_scores", "auto"))
    em_thresholds = check_thresholds(cfg.get("em_thresholds") or [0.5]) if membrane is not None else []
    membrane_probs: list[np.ndarray] = []
    keep = None if membrane is None else (lambda p: membrane_probs.append(p[membrane].astype(np.float32)))
    emptied: list[list[dict]] = []
    result = evaluate(label_function(modules, inference, tta, post, keep, emptied), list(module.class_names), images, masks, stems,
                      dm.ignore_index)
    if any(emptied):
        from segkit.inference.postprocess import emptied_message

        for stem, notes in zip(stems, emptied, strict=True):
            if notes:
                say(emptied_message(stem, notes, module.class_names))
    out = Path(cfg.paths.output_dir)
    meta = {
        "checkpoint": str(ckpt),
        "checkpoints": [str(p) for p in ckpts],
        "tta": tta,
        "postprocess": post,
        "postprocess_source": post_source,
        "run_dir": str(run.path) if (run := rundir.run_of_checkpoint(ckpt)) is not None else None,
        "split": split,
        "num_images": len(stems),
        "data": {"name": dm.name, "root": str(dm.root)},
        "data_source": data_source,
        "emptied_by_thresholds": {stem: notes for stem, notes in zip(stems, emptied, strict=True) if notes},
        "device": str(device),
        "wall_time_s": time.perf_counter() - started,
    }
    objects = None
    if dm.object_classes:
        from segkit.evaluation.object_report import object_report

        objects = object_report(result["predictions"], masks, stems, list(dm.class_names), dm.object_classes, dm.edge_class, out,
                                pixel_size=cfg.get("pixel_size"),
                                exclude_border=bool((cfg.get("objects") or {}).get("exclude_border", True)))
    em = None
    if membrane is not None:
        em = em_report(membrane_probs, masks, stems, membrane, em_thresholds, split, out,
                       dm.ignore_index, int(cfg.get("em_connectivity", 4)), str(cfg.get("em_background", "segment")))
    report = write_outputs(out, result, list(dm.class_names), meta, images, masks, stems, int(cfg.worst_k), objects, em)
    p = result["pooled"]
    per_class = ", ".join(f"{c} {_fmt(p[f'iou/{c}'])}" for c in dm.class_names)
    say(f"{split} ({len(stems)} images), pooled: mIoU {_fmt(p['miou'])}  mDice {_fmt(p['mdice'])}  IoU per class: {per_class}")
    m = result["mean_over_images"]
    say(f"mean over images: mIoU {_fmt(m['miou'])}  mDice {_fmt(m['mdice'])}")
    for row in (em or {}).get("mean_over_slices_rows", []):
        say(f"EM scores (mean over slices) at threshold {row['threshold']:g}: pixel error {_fmt(row['pixel_error'])}  "
              f"V_rand {_fmt(row['v_rand'])}  V_info {_fmt(row['v_info'])}")
    say(f"Report: {report}")
    return {**result, "em": em, "report": report, "output_dir": out}
