"""Choose post-processing on the VALIDATION split: ``python -m segkit.tune_postprocess ckpt_path=<ckpt>``.

A grid search, one parameter at a time (coordinate ascent): a probability threshold per object class,
then the minimum object size, then the median-filter window, each kept only when it improves ``metric``
on the validation images; a second round only when the first changed something. The held-out test split
is never touched. The choice, the validation metric before/after and every trial are written to
``postprocess.json`` next to the checkpoint (``postprocess_ensemble_<id>.json`` for an ensemble), which
``segkit.eval`` and ``segkit.predict`` then use by default.

Metrics: pixel scores pooled over the validation images (``miou``, ``mdice``, ``pixel_acc``,
``iou/<class>``, ``dice/<class>``, ...: higher is better) or object-level agreement with the validation
masks (lower is better): ``count_error/<class>``, the pooled relative error of the object count
(``|sum predicted - sum true| / sum true``), and ``ks/<class>``, the Kolmogorov-Smirnov distance D between
the predicted and the true object areas pooled over the images (objects cut by the image border left out,
as in ``segkit.eval``'s object report).

Speed: the probabilities are predicted once; each median window is applied once per image and kept
(memory permitting); a trial is then a threshold, a connected-component pass and a ``bincount``. The
search stops at ``max_seconds`` and says so in the record.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from segkit import rundir
from segkit.errors import SegkitError
from segkit.evaluation.evaluate import eval_data, image_scores
from segkit.inference.load import load_network, resolve_device
from segkit.inference.postprocess import (
    apply_thresholds,
    fill_holes,
    median_filter_probs,
    remove_small_objects,
)
from segkit.inference.predictor import label_probs
from segkit.logs import say
from segkit.rundir import postprocess_file

#: object-level metrics (lower is better): name -> what it measures
OBJECT_METRICS = {
    "count_error": "|predicted - true| object count / true count, pooled over the validation images",
    "ks": "Kolmogorov-Smirnov distance between predicted and true object areas, pooled over the validation images",
}
CACHE_BYTES = 4 * 1024**3  # median-filtered probabilities kept in memory at most


def parse_metric(metric: str, class_names: Sequence[str]) -> tuple[str, int | None, bool]:
    """``metric`` -> (kind, class index or None, higher is better); a sentence naming what is expected otherwise."""
    expected = ("expected miou, mdice, pixel_acc, <iou|dice|precision|recall>/<class name> or "
                "<count_error|ks>/<class name>")
    kind, _, name = str(metric).partition("/")
    if kind in OBJECT_METRICS:
        if name not in class_names:
            raise SegkitError(f"metric is '{metric}' but '{name}' is not a class of {list(class_names)}; {expected}")
        return kind, list(class_names).index(name), False
    if name and name not in class_names:
        raise SegkitError(f"metric is '{metric}' but '{name}' is not a class of {list(class_names)}; {expected}")
    if not name and kind not in ("miou", "mdice", "pixel_acc"):
        raise SegkitError(f"metric is '{metric}'; {expected}")
    return "pixel", None, True


def _object_areas(labels: np.ndarray, cls: int, edge_class: int | None, background: int) -> np.ndarray:
    """Areas of the objects of class ``cls`` (as ``segkit.eval`` splits them), those touching the border left out."""
    from segkit.evaluation.objects import instances

    inst, _ = instances(labels, [cls], edge_class if edge_class != cls else None, background)
    if inst.max() == 0:
        return np.zeros(0, dtype=np.int64)
    areas = np.bincount(inst.ravel())
    border = np.unique(np.concatenate([inst[0], inst[-1], inst[:, 0], inst[:, -1]]))
    keep = np.ones(areas.size, dtype=bool)
    keep[0] = False
    keep[border] = False
    present = areas > 0
    return areas[keep & present]


def _object_count(labels: np.ndarray, cls: int, edge_class: int | None, background: int) -> int:
    from segkit.evaluation.objects import instances

    _, inst_class = instances(labels, [cls], edge_class if edge_class != cls else None, background)
    return len(inst_class)


class Scorer:
    """Scores post-processing configs on fixed validation probabilities and masks.

    ``labels(post)`` gives, per image, exactly what :func:`segkit.inference.postprocess` gives for ``post``
    (tested), with each median window computed once and kept."""

    def __init__(self, probs: list[np.ndarray], masks: list[np.ndarray], class_names: Sequence[str], ignore_index: int,
                 metric: str, edge_class: int | None = None, background: int = 0) -> None:
        if not probs:
            raise SegkitError("no validation images to tune post-processing on; expected at least one")
        self.probs = [np.ascontiguousarray(p, dtype=np.float32) for p in probs]
        self.masks = [np.asarray(m) for m in masks]
        self.class_names = list(class_names)
        self.k = len(self.class_names)
        self.ignore_index, self.edge_class, self.background = ignore_index, edge_class, background
        self.metric = metric
        self.kind, self.cls, self.higher_better = parse_metric(metric, self.class_names)
        per_size = sum(p.nbytes for p in self.probs)
        self._cache: OrderedDict[int, list[np.ndarray]] = OrderedDict()
        self._cache_entries = max(1, int(CACHE_BYTES // max(1, per_size)))
        self.median_seconds: dict[int, float] = {}
        if self.kind != "pixel":
            valid = [m != ignore_index for m in self.masks]
            truth = [np.where(v, m, background).astype(np.int64) for m, v in zip(self.masks, valid, strict=True)]
            if self.kind == "ks":
                self.true_areas = np.concatenate([_object_areas(t, self.cls, edge_class, background) for t in truth])
            else:
                self.true_count = sum(_object_count(t, self.cls, edge_class, background) for t in truth)
        else:
            self._flat_masks = [m.astype(np.int64).ravel() for m in self.masks]
            self._valid = [(fm != ignore_index) & (fm >= 0) & (fm < self.k) for fm in self._flat_masks]

    def filtered(self, size: int | None) -> list[np.ndarray]:
        if not size or int(size) == 1:
            return self.probs
        size = int(size)
        if size in self._cache:
            self._cache.move_to_end(size)
            return self._cache[size]
        started = time.perf_counter()
        out = [median_filter_probs(p, size) for p in self.probs]
        self.median_seconds[size] = round(time.perf_counter() - started, 2)
        self._cache[size] = out
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)
        return out

    def labels(self, post: dict) -> list[np.ndarray]:
        out = []
        classes = post.get("object_classes")
        for p in self.filtered(post.get("median_size")):
            lab = apply_thresholds(p, post.get("thresholds"), background=self.background)
            if post.get("min_object_size") is not None:
                lab = remove_small_objects(lab, int(post["min_object_size"]), classes, background=self.background)
            if post.get("fill_holes"):
                lab = fill_holes(lab, classes, background=self.background)
            out.append(lab)
        return out

    def _labels_or_argmax(self, post: dict) -> list[np.ndarray]:
        return self.labels(post) if post else [p.argmax(0).astype(np.uint8) for p in self.probs]

    def scores(self, post: dict, labels: list[np.ndarray] | None = None) -> dict[str, float]:
        """Every pixel score (:func:`image_scores`) of the confusion matrix pooled over the images under ``post``
        (a pixel metric's scorer only)."""
        import torch

        labels = self._labels_or_argmax(post) if labels is None else labels
        cm = np.zeros(self.k * self.k, dtype=np.int64)
        for lab, fm, valid in zip(labels, self._flat_masks, self._valid, strict=True):
            cm += np.bincount(fm[valid] * self.k + lab.ravel()[valid].astype(np.int64), minlength=self.k * self.k)
        return image_scores(torch.from_numpy(cm.reshape(self.k, self.k)), self.class_names)

    def value(self, post: dict) -> float:
        labels = self._labels_or_argmax(post)
        if self.kind == "pixel":
            value = self.scores(post, labels).get(self.metric)
            if value is None:
                raise SegkitError(f"metric is '{self.metric}'; expected miou, mdice, pixel_acc or <iou|dice|precision|recall>/<class name>")
            return float(value)
        if self.kind == "count_error":
            count = sum(_object_count(lab, self.cls, self.edge_class, self.background) for lab in labels)
            return abs(count - self.true_count) / max(1, self.true_count)
        areas = np.concatenate([_object_areas(lab, self.cls, self.edge_class, self.background) for lab in labels])
        if not areas.size or not self.true_areas.size:
            return 1.0  # no objects on one side: the largest distance there is
        from scipy import stats

        return float(stats.ks_2samp(areas, self.true_areas).statistic)

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` improves on ``b``."""
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        return a > b + 1e-9 if self.higher_better else a < b - 1e-9


def search(probs: list[np.ndarray], masks: list[np.ndarray], class_names: list[str], object_ids: list[int], ignore_index: int,
           metric: str, grid: dict, max_seconds: float | None = None, edge_class: int | None = None,
           clock: Any = time.perf_counter) -> tuple[dict, float, float, list[dict], Scorer]:
    """Coordinate ascent over the grid; returns (chosen config, metric before, after, trials, the scorer). Each
    trial record has the config, its value and its seconds; a search cut by ``max_seconds`` ends with a record
    ``{"stopped": ...}``."""
    started = clock()
    scorer = Scorer(probs, masks, class_names, ignore_index, metric, edge_class)
    base: dict[str, Any] = {"object_classes": list(object_ids)} if object_ids else {}
    before = scorer.value({})
    best, best_value = dict(base), before
    trials: list[dict] = [{"postprocess": {}, metric: before, "seconds": round(clock() - started, 3)}]

    class OutOfTime(Exception):
        pass

    def attempt(candidate: dict) -> bool:
        nonlocal best, best_value
        if max_seconds is not None and clock() - started > max_seconds:
            raise OutOfTime
        t0 = clock()
        value = scorer.value(candidate)
        trials.append({"postprocess": candidate, metric: value, "seconds": round(clock() - t0, 3)})
        if scorer.better(value, best_value):
            best, best_value = candidate, value
            return True
        return False

    try:
        for _ in range(2):
            changed = False
            for c in object_ids:
                for t in grid.get("thresholds", []):
                    thresholds = dict(best.get("thresholds", {}))
                    thresholds[c] = float(t)
                    changed |= attempt({**best, "thresholds": thresholds})
            for size in grid.get("min_object_size", []):
                changed |= attempt({**best, "min_object_size": int(size)})
            for size in grid.get("median_size", []):
                changed |= attempt({**best, "median_size": int(size)})
            if not changed:
                break
    except OutOfTime:
        trials.append({"stopped": f"max_seconds {max_seconds} reached after {len(trials) - 1} trials; the best so far is kept"})
    if best == base and not scorer.better(best_value, before):
        best = {}  # nothing helped: argmax
    return best, before, best_value, trials, scorer


def fold_check(probs: list[np.ndarray], masks: list[np.ndarray], class_names: list[str], object_ids: list[int], ignore_index: int,
               metric: str, grid: dict, folds: int, max_seconds: float | None = None, edge_class: int | None = None,
               seed: int = 0) -> dict[str, Any]:
    """How much of the tuning's gain holds on images it did not see: the val images dealt into ``folds`` seeded
    folds; for each, the search runs on the other folds and its choice is scored on that fold, beside the
    argmax there. Returns the rows and the means over the held-out folds (per class IoU for pixel metrics)."""
    n = len(probs)
    if not 2 <= folds <= n:
        raise SegkitError(f"check_folds is {folds}; expected 0 (off) or 2..{n} (the number of validation images)")
    order = np.random.default_rng(seed).permutation(n)
    rows = []
    for f in range(folds):
        held = sorted(int(i) for i in order[f::folds])
        rest = [i for i in range(n) if i not in set(held)]
        chosen, _, _, _, _ = search([probs[i] for i in rest], [masks[i] for i in rest], class_names, object_ids, ignore_index,
                                    metric, grid, max_seconds, edge_class)
        scorer = Scorer([probs[i] for i in held], [masks[i] for i in held], class_names, ignore_index, metric, edge_class)
        row: dict[str, Any] = {"held_out": held, "postprocess": chosen, "before": scorer.value({}), "after": scorer.value(chosen)}
        if scorer.kind == "pixel":  # per class IoU from the same scorer: its median windows are computed once
            before, after = scorer.scores({}), scorer.scores(chosen)
            for c in class_names:
                row[f"iou/{c}"] = [before[f"iou/{c}"], after[f"iou/{c}"]]
        rows.append(row)
    return {"folds": folds, "seed": seed, "rows": rows, "mean_before": float(np.mean([r["before"] for r in rows])),
            "mean_after": float(np.mean([r["after"] for r in rows]))}


def run_tune(cfg: DictConfig) -> dict[str, Any]:
    grid = OmegaConf.to_container(cfg.grid, resolve=True)
    raw = cfg.ckpt_path
    ckpts = [Path(str(p)) for p in raw] if isinstance(raw, ListConfig | list | tuple) else Path(str(raw))
    max_seconds = cfg.get("max_seconds")
    return tune_checkpoint(ckpts, str(cfg.metric), str(cfg.device), grid, cfg=cfg,
                           max_seconds=None if max_seconds is None else float(max_seconds), check_folds=int(cfg.get("check_folds") or 0))


def default_grid() -> dict[str, Any]:
    """The grid of ``conf/tune_postprocess.yaml`` (read as data)."""
    from segkit import CONF_DIR

    return OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "tune_postprocess.yaml").grid, resolve=True)


def tune_checkpoint(ckpt: Path | Sequence[Path], metric: str, device: str = "auto", grid: dict[str, Any] | None = None,
                    cfg: DictConfig | None = None, dm: Any | None = None, max_seconds: float | None = None,
                    check_folds: int = 0) -> dict[str, Any]:
    """Tune post-processing for ``ckpt`` (or an ensemble: a list, probabilities averaged) on its run's
    validation split, write the record (:func:`postprocess_file`) and print before/after; ``dm`` (a prepared
    datamodule of the same data and split) saves reading it again; ``max_seconds`` bounds the search (the
    prediction of the validation images comes before it). ``check_folds=k`` (k >= 2) adds :func:`fold_check`'s
    out-of-fold estimate to the record (the choice itself is still made on every val image)."""
    started = time.perf_counter()
    ckpts = [Path(ckpt)] if isinstance(ckpt, str | Path) else [Path(p) for p in ckpt]
    dev = resolve_device(device)
    modules = [load_network(p, dev) for p in ckpts]
    names = list(modules[0].class_names)
    for p, m in zip(ckpts[1:], modules[1:], strict=True):
        if list(m.class_names) != names:
            raise SegkitError(f"checkpoint '{p}' predicts {list(m.class_names)} but '{ckpts[0]}' predicts {names}; expected an ensemble over the same classes")
    if dm is None:
        dm, source = eval_data(cfg if cfg is not None else OmegaConf.create({"data": None}), ckpts[0])
        dm.prepare()
    else:
        source = "the training run's data"
    if not dm.split.get("val"):
        raise SegkitError(f"data '{dm.name}' has no validation split; expected one (post-processing is tuned on validation, never on test)")
    images, masks, stems = dm.arrays("val")
    masks = [np.asarray(m) for m in masks]  # tiles of large images are read here (the probabilities take 4 x K times more)
    predict = label_probs(modules, {}, {})  # eval's path: one model or the ensemble's mean probabilities
    probs = [predict(im).numpy() for im in images]
    predict_s = time.perf_counter() - started
    object_ids = [names.index(c) for c in dm.object_classes if c in names]
    edge_id = names.index(dm.edge_class) if dm.edge_class in names else None
    grid = grid if grid is not None else default_grid()
    chosen, before, after, trials, scorer = search(probs, masks, names, object_ids, dm.ignore_index, metric, grid, max_seconds, edge_id)
    stopped = next((t["stopped"] for t in trials if "stopped" in t), None)
    record = {"postprocess": chosen, "metric": metric, "higher_is_better": scorer.higher_better, "split": "val",
              "num_images": len(stems), "before": before, "after": after, "checkpoints": [str(p) for p in ckpts],
              "grid": grid, "max_seconds": max_seconds, "stopped": stopped, "trials": trials, "data_source": source,
              "predict_s": round(predict_s, 2), "median_filter_s": scorer.median_seconds,
              "wall_time_s": round(time.perf_counter() - started, 2)}
    if check_folds:
        record["fold_check"] = fold_check(probs, masks, names, object_ids, dm.ignore_index, metric, grid, check_folds, max_seconds, edge_id)
    path = postprocess_file(ckpts)
    rundir.write_json(path, record)
    members = f"ensemble of {len(ckpts)}" if len(ckpts) > 1 else "checkpoint"
    say(f"validation {metric} ({members}, {len(stems)} images): {before:.4f} before, {after:.4f} after post-processing "
        f"{json.dumps(chosen)} ({len(trials) - 1 - bool(stopped)} trials, {record['wall_time_s']:.1f} s"
        + (f"; {stopped}" if stopped else "") + ")")
    if check_folds:
        fc = record["fold_check"]
        say(f"{check_folds}-fold check (tuned on the other folds, scored on each held-out fold): {metric} "
            + ", ".join(f"{r['before']:.4f} -> {r['after']:.4f}" for r in fc["rows"])
            + f"; mean {fc['mean_before']:.4f} -> {fc['mean_after']:.4f}")
    say(f"written to {path} (segkit.predict and segkit.eval use it by default)")
    return record
