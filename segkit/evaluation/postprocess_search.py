"""Choose post-processing on the VALIDATION split: ``python -m segkit.tune_postprocess ckpt_path=<ckpt>``.

A grid search, one parameter at a time (coordinate ascent, two rounds): a probability threshold per
object class, then the median-filter window, then the minimum object size, each kept only when it
raises ``metric`` (pooled over the validation images). The held-out test split is never touched. The
choice and the validation metric before/after are printed and written to ``postprocess.json`` next to
the checkpoint, which ``segkit.predict`` then uses by default.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from segkit import rundir
from segkit.errors import SegkitError
from segkit.evaluation.evaluate import eval_data, image_scores
from segkit.evaluation.metrics import confusion_matrix
from segkit.inference import postprocess
from segkit.inference.load import load_network, resolve_device
from segkit.inference.predictor import predict_probs
from segkit.logs import say


def score(probs: list[np.ndarray], masks: list[np.ndarray], post: dict, class_names: list[str], ignore_index: int, metric: str) -> float:
    k = len(class_names)
    cm = torch.zeros(k, k, dtype=torch.long)
    for p, m in zip(probs, masks, strict=True):
        labels = postprocess(p, post) if post else p.argmax(0)
        cm += confusion_matrix(torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(m.astype(np.int64)), k, ignore_index)
    value = image_scores(cm, class_names).get(metric)
    if value is None:
        raise SegkitError(f"metric is '{metric}'; expected miou, mdice, pixel_acc or <iou|dice|precision|recall>/<class name>")
    return float(value)


def tune(probs: list[np.ndarray], masks: list[np.ndarray], class_names: list[str], object_ids: list[int], ignore_index: int,
         metric: str, grid: dict) -> tuple[dict, float, float, list[dict]]:
    """Coordinate ascent over the grid; returns (chosen config, metric before, after, trials)."""
    base: dict[str, Any] = {"object_classes": object_ids} if object_ids else {}
    before = score(probs, masks, {}, class_names, ignore_index, metric)
    best, best_value = dict(base), before
    trials = [{"postprocess": {}, metric: before}]

    def attempt(candidate: dict) -> None:
        nonlocal best, best_value
        value = score(probs, masks, candidate, class_names, ignore_index, metric)
        trials.append({"postprocess": candidate, metric: value})
        if value > best_value + 1e-9:
            best, best_value = candidate, value

    for _ in range(2):
        for c in object_ids:
            for t in grid.get("thresholds", []):
                thresholds = dict(best.get("thresholds", {}))
                thresholds[c] = float(t)
                attempt({**best, "thresholds": thresholds})
        for size in grid.get("median_size", []):
            attempt({**best, "median_size": int(size)})
        for size in grid.get("min_object_size", []):
            attempt({**best, "min_object_size": int(size)})
    return best, before, best_value, trials


def run_tune(cfg: DictConfig) -> dict[str, Any]:
    grid = OmegaConf.to_container(cfg.grid, resolve=True)
    return tune_checkpoint(Path(str(cfg.ckpt_path)), str(cfg.metric), str(cfg.device), grid, cfg=cfg)


def default_grid() -> dict[str, Any]:
    """The grid of ``conf/tune_postprocess.yaml`` (read as data)."""
    from segkit import CONF_DIR

    return OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "tune_postprocess.yaml").grid, resolve=True)


def tune_checkpoint(ckpt: Path, metric: str, device: str = "auto", grid: dict[str, Any] | None = None,
                    cfg: DictConfig | None = None, dm: Any | None = None) -> dict[str, Any]:
    """Tune post-processing for ``ckpt`` on its run's validation split, write ``postprocess.json`` next to it,
    print before/after; ``dm`` (a prepared datamodule of the same data and split) saves reading it again."""
    started = time.perf_counter()
    module = load_network(ckpt, resolve_device(device))
    if dm is None:
        dm, source = eval_data(cfg if cfg is not None else OmegaConf.create({"data": None}), ckpt)
        dm.prepare()
    else:
        source = "the training run's data"
    if not dm.split.get("val"):
        raise SegkitError(f"data '{dm.name}' has no validation split; expected one (post-processing is tuned on validation, never on test)")
    images, masks, stems = dm.arrays("val")
    probs = [predict_probs(module, im).numpy() for im in images]
    names = list(module.class_names)
    object_ids = [names.index(c) for c in dm.object_classes if c in names]
    grid = grid if grid is not None else default_grid()
    chosen, before, after, trials = tune(probs, masks, names, object_ids, dm.ignore_index, metric, grid)
    record = {"postprocess": chosen, "metric": metric, "split": "val", "num_images": len(stems),
              "before": before, "after": after, "grid": grid, "trials": trials, "data_source": source,
              "wall_time_s": round(time.perf_counter() - started, 2)}
    path = rundir.postprocess_file(ckpt)
    path.write_text(json.dumps(record, indent=2, default=float) + "\n")
    say(f"validation {metric}: {before:.4f} before, {after:.4f} after post-processing {json.dumps(chosen)}")
    say(f"written to {path} (segkit.predict and segkit.eval use it by default)")
    return record
